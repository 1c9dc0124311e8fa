"""Role gateway, proved on each gateway node through its own API: it answers over TLS, refuses a
wrong key (401) and a key on a model it may not use (404, as for no such model), serves a
completion, and meters it; /metrics is served on the metrics listener only, /openapi.json
needs a key, the Open Inference Protocol's gRPC port answers over TLS and refuses a wrong key, and
the operator console refuses a node that is no admin source and shows its login page to one.

Secrets stay on the node and out of every process's arguments: the admin token and the keys
these tests create reach curl as header files (`-H @file`) in a 0700 folder of the node, and
answers are written there too, never to a world-readable /tmp file."""

import ipaddress
import json
import shlex
import socket
import ssl
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid

import pytest

ETC = "/etc/podium/gateway"


@pytest.fixture(scope="module")
def private(host):
    """A 0700 folder on the node for answers and header files; removed at the end."""
    folder = open_private(host)
    yield folder
    host.run(f"rm -rf {shlex.quote(folder)}")


def open_private(host):
    folder = host.check_output("umask 077 && mktemp -d /tmp/podium-verify.XXXXXXXX").strip()
    # The admin token's header is built by the node's shell from the token file: the token
    # itself is never part of a command line, here or there.
    header = f"{folder}/admin.header"
    host.check_output(
        f"umask 077 && {{ printf 'Authorization: Bearer '; cat {shlex.quote(ETC + '/admin-token')}; }}"
        f" > {shlex.quote(header)}"
    )
    return folder


def api(host, settings, private, method, path, auth=None, body=None, admin=False, port=None):
    """curl on the gateway node itself; returns (status, parsed body).

    auth: a header file on the node (see `key_header`); admin: use the admin token's.
    """
    scheme = "https" if settings["tls"] else "http"
    url = f"{scheme}://{host.backend.get_hostname()}:{port or settings['port']}{path}"
    answer = f"{private}/answer"
    args = ["curl", "-sS", "-o", answer, "-w", "%{http_code}", "-X", method, url]
    if settings["tls"]:
        args += ["--cacert", f"{ETC}/ca.crt"]
    if admin:
        auth = f"{private}/admin.header"
    if auth:
        args += ["-H", f"@{auth}"]
    if body is not None:
        args += ["-H", "Content-Type: application/json", "-d", json.dumps(body)]
    status = int(host.check_output("umask 077 && " + " ".join(shlex.quote(a) for a in args)))
    text = host.file(answer).content_string
    try:
        return status, json.loads(text)
    except ValueError:
        return status, text


def key_header(host, private, name):
    """The header file for the key the last answer created, written on the node from that
    answer, so the key goes from the gateway to curl without ever being a command's argument."""
    header = f"{private}/{name}.header"
    extract = "import json,sys; print('Authorization: Bearer ' + json.load(open(sys.argv[1]))['key'])"
    host.check_output(
        f"umask 077 && python3 -c {shlex.quote(extract)} {shlex.quote(private + '/answer')}"
        f" > {shlex.quote(header)}"
    )
    return header


def create_key(host, settings, private, name, models):
    """A key through the admin API: its header file on the node, or fails naming the answer."""
    status, body = api(
        host, settings, private, "POST", "/admin/v1/keys", body={"name": name, "models": models}, admin=True
    )
    assert status == 201, f"admin API could not create key {name}: {status} {body}"
    return key_header(host, private, name)


@pytest.fixture(scope="module")
def scoped_key(host, settings, private):
    """A throwaway key allowed only the first model, revoked at the end."""
    models = sorted(settings["models"])
    name = f"verify-{uuid.uuid4().hex[:8]}"
    header = create_key(host, settings, private, name, models[:1])
    yield header, models
    api(host, settings, private, "DELETE", f"/admin/v1/keys/{name}", admin=True)


def test_010_gateway_runs_and_answers(host, settings, private):
    assert host.service("podium-gateway").is_running
    status, _ = api(host, settings, private, "GET", "/v2/health/live")
    assert status == 200


def test_015_systemd_holds_the_api_port_across_restarts(host):
    # A client that connects while the gateway restarts waits in this socket's queue instead of
    # being refused.
    held = host.service("podium-gateway.socket")
    assert held.is_running and held.is_enabled, "podium-gateway.socket is not active and enabled"


def test_020_wrong_key_gets_401(host, settings, private):
    wrong = f"{private}/wrong.header"
    host.check_output(f"echo 'Authorization: Bearer pdm-not-a-real-key' > {shlex.quote(wrong)}")
    status, body = api(host, settings, private, "GET", "/v1/models", auth=wrong)
    assert status == 401, body


def test_030_key_on_a_model_it_may_not_use_gets_404(host, settings, private, scoped_key):
    header, models = scoped_key
    if len(models) < 2:
        pytest.skip("the gateway serves one model: no model the key may not use")
    other = models[1]
    kind = settings["models"][other]["kind"]
    if kind == "llm":
        status, body = api(
            host,
            settings,
            private,
            "POST",
            "/v1/completions",
            auth=header,
            body={"model": other, "prompt": "hi", "max_tokens": 1},
        )
    else:
        status, body = api(
            host, settings, private, "POST", f"/v2/models/{other}/infer", auth=header, body={"inputs": []}
        )
    # The same answer as for a model that does not exist, so keys cannot list others' models.
    assert status == 404 and body["error"]["code"] == "model_not_found", body


def test_040_a_completion_works_and_is_metered(host, settings, private):
    llms = sorted(n for n, m in settings["models"].items() if m["kind"] == "llm")
    if not llms:
        pytest.skip("no LLM behind this gateway")
    name = f"verify-{uuid.uuid4().hex[:8]}"
    header = create_key(host, settings, private, name, llms[:1])
    try:
        status, body = api(
            host,
            settings,
            private,
            "POST",
            "/v1/completions",
            auth=header,
            body={"model": llms[0], "prompt": "hello", "max_tokens": 4},
        )
        assert status == 200, f"completion through the gateway failed: {status} {body}"
        assert body["usage"]["completion_tokens"] > 0
        status, usage = api(host, settings, private, "GET", "/admin/v1/usage?by=key", admin=True)
        assert status == 200
        mine = [line for line in usage["data"] if line.get("key") == name]
        assert mine and mine[0]["requests"] >= 1, f"no usage record for key {name}: {usage}"
    finally:
        api(host, settings, private, "DELETE", f"/admin/v1/keys/{name}", admin=True)


def test_050_metrics_are_not_on_the_api_port(host, settings, private):
    status, body = api(host, settings, private, "GET", "/metrics")
    assert status == 404, f"GET /metrics on the API port {settings['port']}: expected 404, got {status}"


def test_060_metrics_listener_serves_the_gateway_metrics(host, settings, private):
    status, body = api(host, settings, private, "GET", "/metrics", port=settings["metrics_port"])
    assert status == 200, f"GET /metrics on port {settings['metrics_port']}: expected 200, got {status}"
    assert "podium_gateway_in_flight_requests" in body, "the metrics listener serves no gateway metrics"


def test_070_openapi_needs_a_key(host, settings, private):
    status, _ = api(host, settings, private, "GET", "/openapi.json")
    assert status == 401, f"GET /openapi.json without a key: expected 401, got {status}"


GRPC_CHECK = """
import sys
import tritonclient.grpc as triton
from tritonclient.utils import InferenceServerException
target, ca, name = sys.argv[1:4]
options = [("grpc.ssl_target_name_override", name)] if ca else None
client = triton.InferenceServerClient(target, ssl=bool(ca), root_certificates=ca or None,
                                      channel_args=options)
print("live" if client.is_server_live() else "not live")
try:
    client.get_model_metadata("any", headers={"authorization": "Bearer pdm-not-a-real-key"})
    print("answered")
except InferenceServerException as exc:
    print(exc.status())
"""


def test_080_grpc_answers_over_tls_and_refuses_a_wrong_key(host, settings):
    # The gateway's own venv holds the Open Inference Protocol client; the certificate names
    # the node (its hostname), which BoringSSL checks against the stack CA.
    python = "/opt/podium/gateway/venv/bin/python"
    target = f"{host.backend.get_hostname()}:{settings['grpc_port']}"
    ca = f"{ETC}/ca.crt" if settings["tls"] else ""
    name = host.check_output("hostname").strip()
    args = [python, "-c", GRPC_CHECK, target, ca, name]
    answer = host.check_output(" ".join(shlex.quote(a) for a in args)).split()
    assert answer == ["live", "StatusCode.UNAUTHENTICATED"], (
        f"gRPC ServerLive then ModelMetadata with a wrong key on {target}: expected live and "
        f"UNAUTHENTICATED, got {answer}")


def test_090_the_gateways_address_is_on_exactly_one_gateway_node(host, settings, stack, node):
    floating = settings.get("floating")
    if floating is None:
        pytest.skip("the stack declares no gateway.address")
    assert host.service("keepalived").is_running, "keepalived is not active: the gateways' address cannot move here"
    holds = f"ip -o -4 addr show to {floating['address']}"
    # keepalived elects a holder within a few adverts of its start.
    for _ in range(20):
        holders = [name for name in stack.gateway.nodes if node(name).check_output(holds).strip()]
        if len(holders) == 1:
            break
        time.sleep(0.5)
    assert len(holders) == 1, (
        f"gateway.address {floating['address']}: expected exactly one gateway node holding it, "
        f"found {holders or 'none'}")
    # The address answers from every gateway node, with a certificate that names it.
    scheme = "https" if settings["tls"] else "http"
    ca = f"--cacert {ETC}/ca.crt" if settings["tls"] else ""
    url = f"{scheme}://{floating['address']}:{settings['port']}/v2/health/live"
    answer = host.run(f"curl -sS -o /dev/null -w '%{{http_code}}' --max-time 5 {ca} {url}")
    assert answer.stdout.strip() == "200", (
        f"GET {url} from {host.backend.get_hostname()}: expected 200, got {answer.stdout} {answer.stderr}")


# What the console answers, whatever the path, to a client outside its sources (console_guard.py).
CONSOLE_REFUSED = "the console answers the admin sources only"


def outside_console_sources(stack, sources, gateway_node):
    """A node that is no admin source, to ask the console from: the gateway node itself first,
    else the first other node; None when every node of the stack is an admin source."""
    nets = [ipaddress.ip_network(s) for s in sources]
    names = [gateway_node, *(n for n in stack.node_names if n != gateway_node)]
    return next((n for n in names if not any(stack.node(n).address in net for net in nets)), None)


def console_answer_on(host, url, ca=None):
    """GET `url` with curl on `host`: (status, body). ca: the CA file; None: the node's trust store."""
    args = ["curl", "-sS", "--max-time", "10", "-w", "\\n%{http_code}", url]
    if ca:
        args[1:1] = ["--cacert", ca]
    answer = host.run(" ".join(shlex.quote(a) for a in args))
    body, _, status = answer.stdout.rpartition("\n")
    return (int(status) if status.isdigit() else 0), body or answer.stderr


def console_answer_here(url, ca=None):
    """GET `url` from the control machine: (this machine's address towards it, status, body)."""
    parsed = urllib.parse.urlsplit(url)
    # The address the gateway sees this machine by is the one the console checks.
    with socket.create_connection((parsed.hostname, parsed.port), timeout=10) as probe:
        source = probe.getsockname()[0]
    context = ssl.create_default_context(cafile=ca) if ca else None
    try:
        with urllib.request.urlopen(url, context=context, timeout=10) as answer:
            return source, answer.status, answer.read().decode()
    except urllib.error.HTTPError as refused:
        return source, refused.code, refused.read().decode()


def console_url(stack, settings, gateway_node, path):
    scheme = "https" if settings["tls"] else "http"
    return f"{scheme}://{stack.node(gateway_node).address}:{settings['port']}/console{path}"


def test_100_the_console_refuses_a_node_that_is_no_admin_source(host, settings, stack, node):
    gateway_node = host.backend.get_hostname()
    asker = outside_console_sources(stack, settings["console_sources"], gateway_node)
    if asker is None:
        pytest.skip("every node of the stack is an admin source: none to be refused")
    url = console_url(stack, settings, gateway_node, "/login")
    ca = f"{ETC}/ca.crt" if settings["tls"] and asker in stack.gateway.nodes else None
    status, body = console_answer_on(node(asker), url, ca)
    assert status == 403 and CONSOLE_REFUSED in body, (
        f"GET {url} from {asker} ({stack.node(asker).address}, no admin source): expected 403 "
        f"{CONSOLE_REFUSED!r}, got {status} {body[:200]!r}")


def test_110_the_console_shows_its_login_page_to_an_admin_source(host, settings, stack):
    from podium.registry.ca import ca_certificate

    url = console_url(stack, settings, host.backend.get_hostname(), "/login")
    ca = str(ca_certificate(stack.name)) if settings["tls"] else None
    source, status, body = console_answer_here(url, ca)
    if not any(ipaddress.ip_address(source) in ipaddress.ip_network(s) for s in settings["console_sources"]):
        pytest.skip(f"this machine reaches the gateway from {source}, no admin source")
    assert status == 200 and 'name="token"' in body, (
        f"GET {url} from this machine ({source}, an admin source): expected 200 and the login "
        f"form, got {status} {body[:200]!r}")
