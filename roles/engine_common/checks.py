"""Checks every OpenAI-compatible engine replica must pass (llama.cpp, vLLM, SGLang), asked on
the node itself so the firewall, which admits only the gateway and monitoring, stays shut."""

import json
import shlex

from podium import engine_files


def get(host, url):
    result = host.run(f"curl -fsS --max-time 20 {shlex.quote(url)}")
    assert result.rc == 0, f"GET {url} failed: {result.stderr.strip()}"
    return result.stdout


def base_url(replica):
    return f"http://127.0.0.1:{replica['port']}"


def ready_paths(kind, replica):
    """What says a replica is ready to serve: the engine's health path, and for MLServer its model."""
    paths = [engine_files.HEALTH_PATH[kind]]
    if kind == "predictive":
        paths.append(f"/v2/models/{replica['model']}/ready")
    return paths


def ready(host, kind, replica):
    """The replica answers every readiness path on its node, each with 200 and no status but "ok":
    what `podium verify` checks, and what a rolling change waits for before the next replica."""
    for path in ready_paths(kind, replica):
        body = get(host, f"{base_url(replica)}{path}")
        try:
            status = json.loads(body).get("status", "ok")
        except (ValueError, AttributeError):
            status = "ok"  # vLLM's /health is an empty 200
        assert status == "ok", f"{which(replica)}: {path} answered {body.strip()[:200]}"


def which(replica):
    return f"{replica['engine']} replica {replica['replica']}"


def unit_runs_with(host, kind, replica, environment=()):
    unit = engine_files.unit_name(kind, replica)
    assert host.service(unit).is_running, f"{unit} is not running"
    assert host.service(unit).is_enabled, f"{unit} is not enabled"
    env = host.check_output(f"systemctl show -p Environment --value {unit}")
    for needed in environment:
        assert needed in env, f"{unit} runs without {needed}"


def runs_quiet(host, kind, replica):
    """The unit runs with every setting of the engines' quiet environment: no usage reports, no
    model hub."""
    unit_runs_with(host, kind, replica, [f"{k}={v}" for k, v in engine_files.QUIET_ENV.items()])


def serves_its_name(host, replica):
    body = json.loads(get(host, f"{base_url(replica)}/v1/models"))
    names = [m["id"] for m in body.get("data", [])]
    assert replica["model"] in names, f"{which(replica)} serves {names}"


def completion_has_tokens(host, replica, timeout=60):
    payload = json.dumps({"model": replica["model"], "prompt": "Hello", "max_tokens": 4})
    result = host.run(
        f"curl -fsS --max-time {timeout} -H 'Content-Type: application/json' "
        f"-d {shlex.quote(payload)} {base_url(replica)}/v1/completions"
    )
    assert result.rc == 0, f"completion on {which(replica)}: {result.stderr}"
    usage = json.loads(result.stdout).get("usage", {})
    assert usage.get("completion_tokens", 0) > 0, f"no tokens from {which(replica)}: {result.stdout}"


def metrics_have(host, replica, prefix, engine):
    text = get(host, f"{base_url(replica)}/metrics")
    assert prefix in text, f"/metrics of {which(replica)} has no {engine} metrics"
