"""Role engine-vllm, proved on each host: every replica's unit runs with telemetry off, answers
/health, lists its served model name, completes a prompt with tokens and exposes /metrics."""

from roles.engine_common import checks


def test_010_units_run_with_telemetry_off(host, settings):
    for replica in settings["replicas"]:
        checks.runs_quiet(host, "vllm", replica)


def test_020_health_and_served_name(host, settings):
    for replica in settings["replicas"]:
        checks.ready(host, "vllm", replica)
        checks.serves_its_name(host, replica)


def test_030_completion_returns_tokens(host, settings):
    for replica in settings["replicas"]:
        checks.completion_has_tokens(host, replica, timeout=120)


def test_040_metrics(host, settings):
    for replica in settings["replicas"]:
        checks.metrics_have(host, replica, "vllm:", "vLLM")
