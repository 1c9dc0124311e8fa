"""Role engine-vllm, proved on each host: every replica's unit runs with telemetry off (the CPU
build with its bounded KV cache), answers /health, lists its served model name, completes a
prompt with tokens, and counts those tokens in its own /metrics."""

import json
import re
import shlex

from podium import engine_files
from roles.engine_common import checks

GENERATED = re.compile(r"(?m)^vllm:generation_tokens_total(?:\{[^}]*\})? (\S+)$")


def test_010_units_run_with_telemetry_off(host, settings):
    for replica in settings["replicas"]:
        checks.runs_quiet(host, "vllm", replica)
        if engine_files.device(replica) == "cpu":
            bounded = f"VLLM_CPU_KVCACHE_SPACE={engine_files.VLLM_CPU_KVCACHE_GIB}"
            checks.unit_runs_with(host, "vllm", replica, [bounded])


def test_020_health_and_served_name(host, settings):
    for replica in settings["replicas"]:
        checks.ready(host, "vllm", replica)
        checks.serves_its_name(host, replica)


def test_030_completion_returns_tokens(host, settings):
    for replica in settings["replicas"]:
        checks.completion_has_tokens(host, replica, timeout=120)


def generated(host, replica):
    """vLLM's own count of the tokens it generated, summed over its labels."""
    text = checks.get(host, f"{checks.base_url(replica)}/metrics")
    found = GENERATED.findall(text)
    assert found, f"/metrics of {checks.which(replica)} has no vllm:generation_tokens_total"
    return sum(float(v) for v in found)


def test_040_metrics_count_a_completions_tokens(host, settings):
    for replica in settings["replicas"]:
        before = generated(host, replica)
        payload = json.dumps({"model": replica["model"], "prompt": "Count", "max_tokens": 3,
                              "ignore_eos": True})
        answer = host.check_output(
            f"curl -fsS --max-time 120 -H 'Content-Type: application/json' "
            f"-d {shlex.quote(payload)} {checks.base_url(replica)}/v1/completions")
        made = json.loads(answer)["usage"]["completion_tokens"]
        after = generated(host, replica)
        # Only an idle replica counts exactly what this request made; a busy one counts more.
        assert after - before >= made == 3, (
            f"POST /v1/completions on {checks.which(replica)} made {made} tokens (3 expected); "
            f"vllm:generation_tokens_total moved by {after - before}")
