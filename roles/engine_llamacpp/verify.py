"""Role engine-llamacpp, proved on each host: every replica's unit runs, answers /health, lists
its served model name, completes a prompt with tokens and exposes /metrics, all asked on the
node itself."""

import json
import shlex

from podium import engine_files


def _get(host, url):
    result = host.run(f"curl -fsS --max-time 20 {shlex.quote(url)}")
    assert result.rc == 0, f"GET {url} failed: {result.stderr.strip()}"
    return result.stdout


def _base(replica):
    return f"http://127.0.0.1:{replica['port']}"


def test_010_units_run(host, settings):
    for replica in settings["replicas"]:
        unit = engine_files.unit_name("llamacpp", replica)
        assert host.service(unit).is_running, f"{unit} is not running"
        assert host.service(unit).is_enabled, f"{unit} is not enabled"


def test_020_health(host, settings):
    for replica in settings["replicas"]:
        body = json.loads(_get(host, f"{_base(replica)}/health"))
        assert body.get("status") == "ok", f"replica {replica['replica']} of {replica['engine']}: {body}"


def test_030_models_list_the_served_name(host, settings):
    for replica in settings["replicas"]:
        body = json.loads(_get(host, f"{_base(replica)}/v1/models"))
        names = [m["id"] for m in body.get("data", [])]
        assert replica["model"] in names, f"{replica['engine']} replica {replica['replica']} serves {names}"


def test_040_serves_the_model_pulled_by_digest(host, settings):
    for replica in settings["replicas"]:
        unit = engine_files.unit_name("llamacpp", replica)
        argv = host.check_output(f"systemctl show -p ExecStart --value {unit}").split("argv[]=")[-1].split()
        model = argv[argv.index("--model") + 1]
        if replica.get("model_digest"):
            wanted = engine_files.weights_link(replica)
            assert model == wanted, f"{unit} serves {model}, not the stack's digest ({wanted})"
        target = host.check_output(f"readlink -f {shlex.quote(model)}")
        pulled = target.startswith(engine_files.MODELS + "/sha256:")
        assert pulled, f"{unit} serves {target}, not a model pulled by digest"
        assert host.file(target).is_file, f"{target}, served by {unit}, is missing"


def test_050_completion_returns_tokens(host, settings):
    for replica in settings["replicas"]:
        payload = json.dumps({"model": replica["model"], "prompt": "Hello", "max_tokens": 4})
        result = host.run(
            f"curl -fsS --max-time 60 -H 'Content-Type: application/json' "
            f"-d {shlex.quote(payload)} {_base(replica)}/v1/completions"
        )
        which = f"{replica['engine']} replica {replica['replica']}"
        assert result.rc == 0, f"completion on {which}: {result.stderr}"
        usage = json.loads(result.stdout).get("usage", {})
        assert usage.get("completion_tokens", 0) > 0, f"no tokens from {which}: {result.stdout}"


def test_060_metrics(host, settings):
    for replica in settings["replicas"]:
        text = _get(host, f"{_base(replica)}/metrics")
        assert "llamacpp:" in text, f"/metrics of replica {replica['replica']} has no llama.cpp metrics"
