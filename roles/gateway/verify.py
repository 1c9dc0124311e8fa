"""Role gateway, proved on each gateway node through its own API: it answers over TLS, refuses a
wrong key (401) and a key on a model it may not use (404, as for no such model), serves a
completion, and meters it; /metrics is served on the metrics listener only, and /openapi.json
needs a key."""

import json
import shlex
import uuid

import pytest


def api(host, settings, method, path, key=None, body=None, admin=False, port=None):
    """curl on the gateway node itself; returns (status, parsed body)."""
    scheme = "https" if settings["tls"] else "http"
    url = f"{scheme}://{host.backend.get_hostname()}:{port or settings['port']}{path}"
    args = ["curl", "-sS", "-o", "/tmp/podium-verify-body", "-w", "%{http_code}", "-X", method, url]
    if settings["tls"]:
        args += ["--cacert", "/etc/podium/gateway/ca.crt"]
    if key:
        args += ["-H", f"Authorization: Bearer {key}"]
    if body is not None:
        args += ["-H", "Content-Type: application/json", "-d", json.dumps(body)]
    command = " ".join(shlex.quote(a) for a in args)
    if admin:
        # The admin token stays on the node: read by the shell there, never sent back here.
        command += ' -H "Authorization: Bearer $(cat /etc/podium/gateway/admin-token)"'
    status = int(host.check_output(command))
    text = host.file("/tmp/podium-verify-body").content_string
    try:
        return status, json.loads(text)
    except ValueError:
        return status, text


@pytest.fixture(scope="module")
def scoped_key(host, settings):
    """A throwaway key allowed only the first model, revoked at the end."""
    models = sorted(settings["models"])
    name = f"verify-{uuid.uuid4().hex[:8]}"
    status, body = api(
        host, settings, "POST", "/admin/v1/keys", body={"name": name, "models": models[:1]}, admin=True
    )
    assert status == 201, f"admin API could not create a key: {status} {body}"
    yield body["key"], models
    api(host, settings, "DELETE", f"/admin/v1/keys/{name}", admin=True)


def test_010_gateway_runs_and_answers(host, settings):
    assert host.service("podium-gateway").is_running
    status, _ = api(host, settings, "GET", "/v2/health/live")
    assert status == 200


def test_020_wrong_key_gets_401(host, settings):
    status, body = api(host, settings, "GET", "/v1/models", key="pdm-not-a-real-key")
    assert status == 401, body


def test_030_key_on_a_model_it_may_not_use_gets_404(host, settings, scoped_key):
    key, models = scoped_key
    if len(models) < 2:
        pytest.skip("the gateway serves one model: no model the key may not use")
    other = models[1]
    kind = settings["models"][other]["kind"]
    if kind == "llm":
        status, body = api(
            host,
            settings,
            "POST",
            "/v1/completions",
            key=key,
            body={"model": other, "prompt": "hi", "max_tokens": 1},
        )
    else:
        status, body = api(host, settings, "POST", f"/v2/models/{other}/infer", key=key, body={"inputs": []})
    # The same answer as for a model that does not exist, so keys cannot list others' models.
    assert status == 404 and body["error"]["code"] == "model_not_found", body


def test_040_a_completion_works_and_is_metered(host, settings):
    llms = sorted(n for n, m in settings["models"].items() if m["kind"] == "llm")
    if not llms:
        pytest.skip("no LLM behind this gateway")
    name = f"verify-{uuid.uuid4().hex[:8]}"
    status, created = api(
        host, settings, "POST", "/admin/v1/keys", body={"name": name, "models": llms[:1]}, admin=True
    )
    assert status == 201, created
    try:
        status, body = api(
            host,
            settings,
            "POST",
            "/v1/completions",
            key=created["key"],
            body={"model": llms[0], "prompt": "hello", "max_tokens": 4},
        )
        assert status == 200, f"completion through the gateway failed: {status} {body}"
        assert body["usage"]["completion_tokens"] > 0
        status, usage = api(host, settings, "GET", "/admin/v1/usage?by=key", admin=True)
        assert status == 200
        mine = [line for line in usage["data"] if line.get("key") == name]
        assert mine and mine[0]["requests"] >= 1, f"no usage record for key {name}: {usage}"
    finally:
        api(host, settings, "DELETE", f"/admin/v1/keys/{name}", admin=True)


def test_050_metrics_are_not_on_the_api_port(host, settings):
    status, body = api(host, settings, "GET", "/metrics")
    assert status == 404, f"GET /metrics on the API port {settings['port']}: expected 404, got {status}"


def test_060_metrics_listener_serves_the_gateway_metrics(host, settings):
    status, body = api(host, settings, "GET", "/metrics", port=settings["metrics_port"])
    assert status == 200, f"GET /metrics on port {settings['metrics_port']}: expected 200, got {status}"
    assert "podium_gateway_in_flight_requests" in body, "the metrics listener serves no gateway metrics"


def test_070_openapi_needs_a_key(host, settings):
    status, _ = api(host, settings, "GET", "/openapi.json")
    assert status == 401, f"GET /openapi.json without a key: expected 401, got {status}"
