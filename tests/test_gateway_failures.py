"""Failures under load: a replica killed, a stream cut midway, the gateway itself SIGKILLed."""

from __future__ import annotations

import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest

from tests.fixtures_engines import (
    EngineServer,
    engine_dir,
    llama_server,
    llama_server_bin,
    tiny_gguf,
)
from tests.fixtures_gateway import (
    GatewayFactory,
    GatewayProcess,
    LlamaReplicas,
    gateways,
    llama_replicas,
    models_for,
    usage_rows,
)

__all__ = ["engine_dir", "gateways", "llama_replicas", "llama_server", "llama_server_bin",
           "tiny_gguf"]

pytestmark = pytest.mark.engines
MESSAGES = [{"role": "user", "content": "Tell a story."}]


def post(gw: GatewayProcess, key: str, max_tokens: int, **extra: Any) -> httpx.Response:
    return httpx.post(gw.url + "/v1/chat/completions",
                      headers={"Authorization": f"Bearer {key}"}, timeout=60,
                      json={"model": "tiny", "messages": MESSAGES, "max_tokens": max_tokens,
                            **extra})


def stream(gw: GatewayProcess, key: str, max_tokens: int, on_first: Any = None,
           **extra: Any) -> dict[str, Any]:
    """Stream one chat completion; what came back: status, data events, how it ended."""
    seen: dict[str, Any] = {"status": None, "chunks": 0, "done": False, "error": None, "id": None}
    with httpx.stream("POST", gw.url + "/v1/chat/completions",
                      headers={"Authorization": f"Bearer {key}"}, timeout=60,
                      json={"model": "tiny", "messages": MESSAGES, "max_tokens": max_tokens,
                            "stream": True, **extra}) as resp:
        seen["status"] = resp.status_code
        seen["id"] = resp.headers.get("x-request-id")
        for line in resp.iter_lines():
            if not line.startswith("data: "):
                continue
            data = line.removeprefix("data: ")
            if data == "[DONE]":
                seen["done"] = True
            elif "error" in json.loads(data):
                seen["error"] = json.loads(data)["error"]
            else:
                seen["chunks"] += 1
                if seen["chunks"] == 1 and on_first is not None:
                    on_first()
    return seen


def metric(gw: GatewayProcess, prefix: str) -> str:
    text = httpx.get(gw.metrics_url, timeout=10).text
    return "\n".join(line for line in text.splitlines() if line.startswith(prefix))


def test_a_replica_killed_under_load_loses_no_request_not_yet_streaming(
        gateways: GatewayFactory, llama_replicas: LlamaReplicas) -> None:
    a, b = llama_replicas.start(), llama_replicas.start()
    gw = gateways.start(models={"tiny": {"served_name": a.model, "replicas": [a.url, b.url]}})
    key = gw.new_key("under-load")

    def one(i: int) -> Any:
        if i % 4 == 0:
            return stream(gw, key, 48)
        return post(gw, key, 48).status_code

    with ThreadPoolExecutor(8) as pool:
        futures = [pool.submit(one, i) for i in range(80)]
        while sum(f.done() for f in futures) < 16:
            time.sleep(0.01)
        llama_replicas.kill(a)
        results = [f.result() for f in futures]
    plain = [r for r in results if isinstance(r, int)]
    streams = [r for r in results if isinstance(r, dict)]
    assert plain == [200] * len(plain), "a non-streamed request was lost with its replica"
    for s in streams:
        # Either the whole stream, or one that broke after it started, ending in an error event.
        assert s["status"] == 200, s
        assert s["done"] or (s["chunks"] > 0 and s["error"] is not None), s
    assert f'replica="{a.url}"}} 0.0' in metric(gw, "podium_gateway_upstream_healthy")
    # Later requests avoid the dead replica altogether.
    assert [post(gw, key, 4).status_code for _ in range(10)] == [200] * 10
    # Back on its port, the replica is probed back into rotation.
    llama_replicas.start(port=int(a.url.rsplit(":", 1)[1]))
    deadline = time.monotonic() + 15
    while f'replica="{a.url}"}} 1.0' not in metric(gw, "podium_gateway_upstream_healthy"):
        assert time.monotonic() < deadline, "the restarted replica never came back"
        time.sleep(0.2)


def test_a_stream_cut_midway_ends_with_an_sse_error_event(
        gateways: GatewayFactory, llama_replicas: LlamaReplicas) -> None:
    # One slot with a long context, so a generation lasts long enough to be cut.
    engine = llama_replicas.start(ctx=4096, slots=1)
    gw = gateways.start(models=models_for(engine.url, engine.model))
    key = gw.new_key("cut")
    seen = stream(gw, key, 3500, on_first=lambda: llama_replicas.kill(engine), ignore_eos=True)
    assert seen["status"] == 200 and seen["chunks"] >= 1
    assert not seen["done"], "the stream ended normally; it was not cut"
    assert seen["error"] is not None and seen["error"]["type"] == "server_error"
    assert "broke off" in seen["error"]["message"]
    # A cut stream is billed just after its last byte: the gateway first asks the engine
    # to count what it relayed (here the engine is gone, so it bills its byte estimate).
    deadline = time.monotonic() + 10
    while not usage_rows(gw.store, "cut") and time.monotonic() < deadline:
        time.sleep(0.1)
    [row] = usage_rows(gw.store, "cut")
    assert row["status"] == 502 and row["completion_tokens"] >= 1
    assert "podium_gateway_stream_errors_total" in metric(gw, "podium_gateway_stream_errors")


def test_a_gateway_killed_under_load_has_a_record_for_every_completed_response(
        gateways: GatewayFactory, llama_server: EngineServer) -> None:
    gw = gateways.start(models=models_for(llama_server.url, llama_server.model))
    key = gw.new_key("crash")
    completed: list[str] = []
    failures: list[str] = []
    stop = threading.Event()

    def worker(i: int) -> None:
        while not stop.is_set():
            try:
                if i % 2:
                    seen = stream(gw, key, 16)
                    if seen["done"]:
                        completed.append(seen["id"])
                else:
                    resp = post(gw, key, 16)
                    if resp.status_code == 200:
                        completed.append(resp.headers["x-request-id"])
            except httpx.HTTPError as exc:
                failures.append(repr(exc))
                time.sleep(0.05)  # the gateway is down; keep trying until told to stop

    assert post(gw, key, 2).status_code == 200  # warm: the engine's first decode is slow
    threads = [threading.Thread(target=worker, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    try:
        deadline = time.monotonic() + 30
        while len(completed) < 30 and time.monotonic() < deadline:
            time.sleep(0.05)
        gw.kill()  # mid-load: requests are in flight on every thread
        done_before_kill = list(completed)
    finally:
        stop.set()
        for t in threads:
            t.join(60)
    assert len(done_before_kill) >= 30, f"too little load to prove anything: {failures[:3]}"
    gw.start()  # the same config and store, as a supervisor would restart it
    recorded = {row["request_id"] for row in usage_rows(gw.store, "crash")}
    missing = set(done_before_kill) - recorded
    assert not missing, f"{len(missing)} completed responses have no usage record"
    assert post(gw, key, 2).status_code == 200
