"""Role registry, proved from the control machine and the nodes: /v2/ answers over TLS signed by
the stack CA, nobody pushes without the push account, the push account can push and delete, the
data lands on the storage path and the metrics listener serves Prometheus."""

import hashlib
import secrets
from urllib.parse import urljoin

import pytest
import requests

from podium.registry.access import pull_credential, push_credential, registry_ca

PROBE_REPOSITORY = "podium-verify/probe"


@pytest.fixture(scope="module")
def base(settings):
    scheme = "https" if settings["tls"] else "http"
    return f"{scheme}://{settings['address']}:{settings['port']}"


@pytest.fixture(scope="module")
def verify_tls(settings, stack):
    return str(registry_ca(stack.name)) if settings["tls"] else True


def _auth(credential):
    return (credential.user, credential.password) if credential else None


def _start_upload(base, verify_tls, credential):
    url = f"{base}/v2/{PROBE_REPOSITORY}/blobs/uploads/"
    return requests.post(url, auth=_auth(credential), verify=verify_tls, timeout=10)


def test_010_registry_nginx_and_gc_timer_run(host):
    assert host.service("docker-registry").is_running, "docker-registry is not running"
    assert host.service("nginx").is_running, "nginx is not running"
    assert host.service("podium-registry-gc.timer").is_enabled, "the registry gc timer is not enabled"


def test_020_v2_answers_over_tls_signed_by_the_stack_ca(base, verify_tls, stack):
    anonymous = requests.get(f"{base}/v2/", verify=verify_tls, timeout=10)
    assert anonymous.status_code == 401, f"/v2/ without an account answered {anonymous.status_code}"
    pulled = requests.get(
        f"{base}/v2/", auth=_auth(pull_credential(stack.name)), verify=verify_tls, timeout=10
    )
    assert pulled.status_code == 200, f"/v2/ with the pull account answered {pulled.status_code}"


def test_030_other_nodes_trust_the_registry_certificate(base, settings, node, stack):
    """curl on a peer checks TLS with the node's own trust store (where base put the CA)."""
    peers = [n for n in stack.node_names if n != settings["node"]]
    for peer in peers:
        code = node(peer).run(f"curl -sS -o /dev/null -w '%{{http_code}}' {base}/v2/")
        assert code.stdout.strip() == "401", f"{peer} cannot reach {base}/v2/ over TLS: {code.stderr}"


def test_040_anonymous_push_is_refused(base, verify_tls):
    response = _start_upload(base, verify_tls, None)
    assert response.status_code == 401, f"an anonymous push got HTTP {response.status_code}"


def test_050_pull_account_cannot_push_or_delete(base, verify_tls, stack):
    pull = pull_credential(stack.name)
    response = _start_upload(base, verify_tls, pull)
    assert response.status_code in (401, 403), f"the pull account could start a push ({response.status_code})"
    digest = "sha256:" + "0" * 64
    url = f"{base}/v2/{PROBE_REPOSITORY}/manifests/{digest}"
    deleted = requests.delete(url, auth=_auth(pull), verify=verify_tls, timeout=10)
    assert deleted.status_code in (401, 403), f"the pull account could delete ({deleted.status_code})"


def test_060_push_account_pushes_and_deletes_on_the_storage_path(base, verify_tls, host, settings, stack):
    push = push_credential(stack.name)
    data = secrets.token_bytes(64)
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    started = _start_upload(base, verify_tls, push)
    assert started.status_code == 202, f"the push account could not start a push ({started.status_code})"
    location = urljoin(base, started.headers["Location"])
    sep = "&" if "?" in location else "?"
    put = requests.put(
        f"{location}{sep}digest={digest}",
        data=data,
        headers={"Content-Type": "application/octet-stream"},
        auth=_auth(push),
        verify=verify_tls,
        timeout=10,
    )
    assert put.status_code == 201, f"the push account could not push ({put.status_code} {put.text[:200]})"
    blob = f"{base}/v2/{PROBE_REPOSITORY}/blobs/{digest}"
    try:
        got = requests.get(blob, auth=_auth(pull_credential(stack.name)), verify=verify_tls, timeout=10)
        assert got.content == data, "the pull account does not read back the pushed blob"
        stored = f"{settings['path']}/docker/registry/v2/blobs/sha256/{digest[7:9]}/{digest[7:]}/data"
        assert host.file(stored).exists, f"the blob is not under the storage path {settings['path']}"
    finally:
        deleted = requests.delete(blob, auth=_auth(push), verify=verify_tls, timeout=10)
    assert deleted.status_code == 202, f"deleting with the push account answered {deleted.status_code}"


def test_070_metrics_listener_serves_prometheus(host, settings):
    metrics = host.run(f"curl -sf http://127.0.0.1:{settings['debug_port']}/metrics")
    assert metrics.rc == 0, f"nothing answers on the debug port {settings['debug_port']}"
    assert "registry_" in metrics.stdout, "the debug listener serves no registry metrics"
