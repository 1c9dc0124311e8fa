"""`GET /health` on a real gateway in front of real llama-server replicas."""

from __future__ import annotations

import json
import time

import pytest

from tests.fixtures_engines import engine_dir, llama_server_bin, tiny_gguf
from tests.fixtures_gateway import GatewayFactory, LlamaReplicas, gateways, http, llama_replicas

__all__ = ["engine_dir", "gateways", "llama_replicas", "llama_server_bin", "tiny_gguf"]

pytestmark = pytest.mark.engines


def wait_health(url: str, status: int, timeout: float = 15.0) -> tuple[int, bytes]:
    deadline = time.monotonic() + timeout
    while True:
        got, _, body = http("GET", url + "/health", timeout=5)
        if got == status or time.monotonic() > deadline:
            return got, body
        time.sleep(0.2)


def test_health_is_up_without_a_key_while_a_replica_serves_and_down_when_none_does(
        gateways: GatewayFactory, llama_replicas: LlamaReplicas) -> None:
    first = llama_replicas.start()
    gw = gateways.start(models={
        "tiny": {"kind": "llm", "served_name": first.model, "replicas": [first.url]},
        "other": {"kind": "llm", "served_name": first.model, "replicas": [first.url]},
    })
    status, body = wait_health(gw.url, 200)
    assert status == 200, body
    # Up or down and nothing more: no model names, replicas or versions for a caller with no key.
    assert json.loads(body) == {"status": "ok"}
    assert b"tiny" not in body and b"127.0.0.1" not in body

    llama_replicas.kill(first)
    status, body = wait_health(gw.url, 503)
    assert status == 503, body
    assert json.loads(body) == {"status": "unavailable"}

    # The same port comes back: the health checks return the replica, and /health follows.
    llama_replicas.start(port=int(first.url.rsplit(":", 1)[1]))
    assert wait_health(gw.url, 200)[0] == 200
