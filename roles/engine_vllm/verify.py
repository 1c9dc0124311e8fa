"""Role engine-vllm, proved on each host: every replica's unit runs with telemetry off, answers
/health, lists its served model name, completes a prompt with tokens and exposes /metrics."""

import json
import shlex

from podium import engine_files


def _get(host, url):
    result = host.run(f"curl -fsS --max-time 20 {shlex.quote(url)}")
    assert result.rc == 0, f"GET {url} failed: {result.stderr.strip()}"
    return result.stdout


def test_010_units_run_with_telemetry_off(host, settings):
    for replica in settings["replicas"]:
        unit = engine_files.unit_name("vllm", replica)
        assert host.service(unit).is_running, f"{unit} is not running"
        env = host.check_output(f"systemctl show -p Environment --value {unit}")
        for needed in ("VLLM_NO_USAGE_STATS=1", "DO_NOT_TRACK=1", "HF_HUB_OFFLINE=1"):
            assert needed in env, f"{unit} runs without {needed}"


def test_020_health_and_served_name(host, settings):
    for replica in settings["replicas"]:
        base = f"http://127.0.0.1:{replica['port']}"
        _get(host, f"{base}/health")
        names = [m["id"] for m in json.loads(_get(host, f"{base}/v1/models"))["data"]]
        assert replica["model"] in names, f"{replica['engine']} replica {replica['replica']} serves {names}"


def test_030_completion_returns_tokens(host, settings):
    for replica in settings["replicas"]:
        payload = json.dumps({"model": replica["model"], "prompt": "Hello", "max_tokens": 4})
        result = host.run(f"curl -fsS --max-time 120 -H 'Content-Type: application/json' "
                          f"-d {shlex.quote(payload)} http://127.0.0.1:{replica['port']}/v1/completions")
        assert result.rc == 0, f"completion on replica {replica['replica']}: {result.stderr}"
        usage = json.loads(result.stdout).get("usage", {})
        assert usage.get("completion_tokens", 0) > 0, f"no tokens from replica {replica['replica']}"


def test_040_metrics(host, settings):
    for replica in settings["replicas"]:
        text = _get(host, f"http://127.0.0.1:{replica['port']}/metrics")
        assert "vllm:" in text, f"/metrics of replica {replica['replica']} has no vLLM metrics"
