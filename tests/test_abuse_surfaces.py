"""Abuse of the gateway's surfaces: slow and huge requests, stalled readers, connection floods,
/metrics and /openapi.json, what a failed upstream shows, and deeply nested JSON.

Each test runs a real gateway process on 127.0.0.1; where an engine must misbehave on purpose
(flood a stream, drop a connection), a scripted engine on 127.0.0.1 plays it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import select
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import yaml

from tests.fixtures_gateway import GatewayFactory, GatewayProcess, free_port, gateways, usage_rows

__all__ = ["gateways"]

# Probes never eject a replica here: the tests want each request to reach its engine.
QUIET_HEALTH = {"interval_s": 3600, "timeout_s": 1.0, "eject_after": 1000}
CHAT = [{"role": "user", "content": "hi"}]
# A stream event of 8 KiB of text: a stalled reader's buffers fill in a few hundred of them.
FLOOD_EVENT = (b'data: {"choices":[{"index":0,"delta":{"content":"' + b"x" * 8192
               + b'"}}]}\n\n')
FLOOD_MAX_EVENTS = 4000  # 32 MiB at most, however the gateway behaves
FLOOD_MAX_S = 60.0


class ScriptedEngine:
    """An engine on 127.0.0.1 that answers /health and misbehaves on every other request.

    mode "flood": a 200 event stream that never ends (bounded in count and time);
    mode "drop": the connection is closed without an answer;
    mode "cut": a 200 stream of three events, then the connection is closed.
    """

    def __init__(self, mode: str) -> None:
        self.mode = mode
        self.port = 0
        self.events_sent = 0
        self.stream_ended = threading.Event()
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> ScriptedEngine:
        self._thread.start()
        assert self._ready.wait(10), "the scripted engine did not start"
        return self

    def stop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        server = self._loop.run_until_complete(
            asyncio.start_server(self._serve, "127.0.0.1", 0))
        self.port = server.sockets[0].getsockname()[1]
        self._ready.set()
        self._loop.run_forever()
        server.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            path = head.split(b" ", 2)[1]
            length = 0
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            await reader.readexactly(length)
            if path.startswith(b"/health"):
                writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
                             b"content-length: 15\r\nconnection: close\r\n\r\n{\"status\":\"ok\"}")
                await writer.drain()
            elif self.mode == "drop":
                writer.transport.abort()
                return
            else:
                writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
                             b"connection: close\r\n\r\n")
                await self._stream(writer, 3 if self.mode == "cut" else FLOOD_MAX_EVENTS)
                if self.mode == "cut":
                    writer.transport.abort()
                    return
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            with contextlib.suppress(Exception):
                writer.close()

    async def _stream(self, writer: asyncio.StreamWriter, events: int) -> None:
        deadline = time.monotonic() + FLOOD_MAX_S
        try:
            for _ in range(events):
                if time.monotonic() > deadline:
                    break
                writer.write(FLOOD_EVENT)
                await asyncio.wait_for(writer.drain(), max(0.1, deadline - time.monotonic()))
                self.events_sent += 1
        except (ConnectionError, TimeoutError):
            pass
        finally:
            self.stream_ended.set()


@pytest.fixture
def scripted() -> Iterator[Any]:
    started: list[ScriptedEngine] = []

    def start(mode: str) -> ScriptedEngine:
        engine = ScriptedEngine(mode).start()
        started.append(engine)
        return engine

    yield start
    for engine in started:
        engine.stop()


def connect(gw: GatewayProcess, port: int | None = None, rcvbuf: int | None = None
            ) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if rcvbuf is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.settimeout(30)
    sock.connect(("127.0.0.1", port or gw.port))
    return sock


def read_until_closed(sock: socket.socket, limit_s: float) -> tuple[bytes, float]:
    """Everything the gateway sends until it closes the connection, and how long that took."""
    started = time.monotonic()
    sock.settimeout(limit_s)
    got = b""
    with contextlib.suppress(ConnectionResetError):
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                break
            got += chunk
    return got, time.monotonic() - started


def request_head(path: str, key: str | None = None, length: int | None = None) -> bytes:
    lines = [f"POST {path} HTTP/1.1", "Host: 127.0.0.1", "Content-Type: application/json"]
    if key:
        lines.append(f"Authorization: Bearer {key}")
    if length is not None:
        lines.append(f"Content-Length: {length}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def still_serves(gw: GatewayProcess) -> bool:
    return httpx.get(gw.url + "/v2/health/live", timeout=10).status_code == 200


def test_headers_sent_a_byte_at_a_time_are_cut_off_at_the_header_timeout(
        gateways: GatewayFactory, scripted: Any) -> None:
    engine = scripted("flood")
    gw = gateways.start(models={"tiny": {"replicas": [engine.url]}},
                        connections={"header_timeout_s": 1.0})
    sock = connect(gw)
    sock.sendall(b"GET /v1/models HTTP/1.1\r\nHost: 127.0.0.1\r\n")
    started = time.monotonic()
    # Two header lines a second, for at most 6 s: a slowloris client keeps this up for ever.
    for i in range(12):
        if select.select([sock], [], [], 0.5)[0]:
            break  # the gateway has answered
        sock.sendall(b"X-Slow-%d: 1\r\n" % i)
    got, _ = read_until_closed(sock, 10)
    elapsed = time.monotonic() - started
    assert elapsed < 4.0, f"the connection stayed open {elapsed:.1f} s"
    assert got.startswith(b"HTTP/1.1 408"), got[:200]
    assert still_serves(gw)


def test_a_half_sent_body_is_cut_off_at_the_body_timeout(
        gateways: GatewayFactory, scripted: Any) -> None:
    engine = scripted("flood")
    gw = gateways.start(models={"tiny": {"replicas": [engine.url]}},
                        connections={"body_timeout_s": 1.0})
    key = gw.new_key("half-body")
    sock = connect(gw)
    sock.sendall(request_head("/v1/chat/completions", key, length=1000) + b'{"model": "ti')
    got, elapsed = read_until_closed(sock, 10)
    assert elapsed < 3.0, f"a body that never ended held its connection {elapsed:.1f} s"
    assert got.startswith(b"HTTP/1.1 408"), got[:200]
    assert b"request body" in got
    assert still_serves(gw)
    assert usage_rows(gw.store, "half-body") == [], "a request that never arrived was billed"
    assert "Traceback" not in gw.log(), gw.log()[-2000:]


def test_a_10_mb_header_is_refused_with_431(gateways: GatewayFactory, scripted: Any) -> None:
    engine = scripted("flood")
    gw = gateways.start(models={"tiny": {"replicas": [engine.url]}})
    sock = connect(gw)
    huge = b"GET /v1/models HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Huge: " + b"a" * (10 << 20)
    with contextlib.suppress(OSError):
        sock.sendall(huge + b"\r\n\r\n")
    got, _ = read_until_closed(sock, 15)
    assert got.startswith(b"HTTP/1.1 431"), got[:200]
    body = json.loads(got.split(b"\r\n\r\n", 1)[1])
    assert "headers are over 65536 bytes" in body["error"]["message"]
    assert still_serves(gw)


def test_a_client_that_stops_reading_a_stream_is_cut_off_and_still_billed(
        gateways: GatewayFactory, scripted: Any) -> None:
    engine = scripted("flood")
    gw = gateways.start(models={"tiny": {"replicas": [engine.url]}}, health=QUIET_HEALTH,
                        connections={"write_timeout_s": 1.0})
    key = gw.new_key("stalled")
    body = json.dumps({"model": "tiny", "messages": CHAT, "stream": True}).encode()
    # A small receive buffer, so the gateway's own buffers fill in well under a second.
    sock = connect(gw, rcvbuf=4096)
    sock.sendall(request_head("/v1/chat/completions", key, len(body)) + body)
    assert sock.recv(16).startswith(b"HTTP/1.1 200")
    started = time.monotonic()
    rows: list[dict[str, Any]] = []
    while not rows and time.monotonic() - started < 20:  # this client reads nothing more
        time.sleep(0.2)
        rows = usage_rows(gw.store, "stalled")
    elapsed = time.monotonic() - started
    assert rows, "the stalled stream is still held, and unbilled, after 20 s"
    assert elapsed < 10, f"the stalled stream was cut off only after {elapsed:.1f} s"
    assert rows[0]["completion_tokens"] >= 1, rows[0]
    assert engine.stream_ended.wait(10), "the engine is still streaming to nobody"
    assert engine.events_sent < FLOOD_MAX_EVENTS
    sock.close()
    assert still_serves(gw)


def test_connections_past_the_limit_are_answered_503_and_closed(
        gateways: GatewayFactory, scripted: Any) -> None:
    engine = scripted("flood")
    gw = gateways.start(models={"tiny": {"replicas": [engine.url]}},
                        connections={"max_connections": 3, "header_timeout_s": 30})
    idle = [connect(gw) for _ in range(3)]
    time.sleep(0.5)  # the gateway has accepted all three
    extra = connect(gw)
    got, elapsed = read_until_closed(extra, 5)
    assert got.startswith(b"HTTP/1.1 503"), got[:200]
    assert elapsed < 2.0
    # A flood of refused connections is one log line a second, not one each.
    for _ in range(20):
        assert read_until_closed(connect(gw), 5)[0].startswith(b"HTTP/1.1 503")
    refusals = [line for line in gw.log().splitlines() if "refused:" in line]
    assert 1 <= len(refusals) <= 3, refusals
    # The metrics listener is not capped: Prometheus still scrapes a flooded gateway.
    assert httpx.get(gw.metrics_url, timeout=10).status_code == 200
    for sock in idle:
        sock.close()
    time.sleep(0.5)
    assert still_serves(gw)


def test_metrics_are_served_on_their_own_listener_only(gateways: GatewayFactory,
                                                       scripted: Any) -> None:
    engine = scripted("flood")
    gw = gateways.start(models={"tiny": {"replicas": [engine.url]}})
    public = httpx.get(gw.url + "/metrics", timeout=10)
    assert public.status_code == 404, public.text
    scraped = httpx.get(gw.metrics_url, timeout=10)
    assert scraped.status_code == 200 and "podium_gateway_in_flight_requests" in scraped.text
    # The metrics listener serves nothing else: no API behind a port with no key.
    other = httpx.get(f"http://127.0.0.1:{gw.metrics_port}/v1/models", timeout=10)
    assert other.status_code == 404


def test_metrics_listener_defaults_to_the_port_after_the_api(gateways: GatewayFactory,
                                                            scripted: Any) -> None:
    engine = scripted("flood")
    gw = gateways.start(models={"tiny": {"replicas": [engine.url]}}, metrics_listen=None)
    assert gw.metrics_port == gw.port + 1
    assert "podium_gateway_" in httpx.get(gw.metrics_url, timeout=10).text


def test_openapi_document_needs_a_valid_key(gateways: GatewayFactory, scripted: Any) -> None:
    engine = scripted("flood")
    gw = gateways.start(models={"tiny": {"replicas": [engine.url]}})
    assert httpx.get(gw.url + "/openapi.json", timeout=10).status_code == 401
    wrong = {"Authorization": "Bearer pdm-not-a-key"}
    assert httpx.get(gw.url + "/openapi.json", headers=wrong, timeout=10).status_code == 401
    key = {"Authorization": f"Bearer {gw.new_key('docs')}"}
    served = httpx.get(gw.url + "/openapi.json", headers=key, timeout=10)
    assert served.status_code == 200 and "/v1/chat/completions" in served.json()["paths"]


def _generic(message: str, request_id: str, engine_port: int) -> None:
    for leak in ("127.0.0.1", str(engine_port), "Error", "Traceback", "/v1/", "http://"):
        assert leak not in message, f"the client was shown {leak!r}: {message}"
    assert request_id in message, f"no request id in: {message}"


def test_upstream_failures_show_no_address_path_or_exception(
        gateways: GatewayFactory, scripted: Any) -> None:
    closed_port = free_port()  # nothing listens there
    dropping, cutting = scripted("drop"), scripted("cut")
    gw = gateways.start(models={
        "closed": {"replicas": [f"http://127.0.0.1:{closed_port}"]},
        "dropping": {"replicas": [dropping.url]},
        "cutting": {"replicas": [cutting.url]},
    }, health=QUIET_HEALTH)
    key = {"Authorization": f"Bearer {gw.new_key('failures')}"}
    for model, port in (("closed", closed_port), ("dropping", dropping.port)):
        answer = httpx.post(gw.url + "/v1/chat/completions", headers=key, timeout=30,
                            json={"model": model, "messages": CHAT})
        assert answer.status_code == 502, answer.text
        request_id = answer.headers["x-request-id"]
        _generic(answer.json()["error"]["message"], request_id, port)
        # The detail is in the gateway's log, under the same request id.
        logged = [line for line in gw.log().splitlines() if request_id in line]
        assert logged and "dropped the connection" in logged[0], gw.log()[-2000:]
    with httpx.stream("POST", gw.url + "/v1/chat/completions", headers=key, timeout=30,
                      json={"model": "cutting", "messages": CHAT, "stream": True}) as resp:
        request_id = resp.headers["x-request-id"]
        errors = [json.loads(line[6:])["error"] for line in resp.iter_lines()
                  if line.startswith("data: {") and '"error"' in line]
    assert errors, "a stream cut by its engine ended without an error event"
    _generic(errors[0]["message"], request_id, cutting.port)
    assert request_id in gw.log()


def test_deeply_nested_json_is_a_400_in_bounded_time(gateways: GatewayFactory,
                                                     scripted: Any) -> None:
    engine = scripted("flood")
    gw = gateways.start(models={"tiny": {"replicas": [engine.url]}})
    key = {"Authorization": f"Bearer {gw.new_key('nested')}",
           "Content-Type": "application/json"}
    depth = 100_000
    body = b'{"model": "tiny", "messages": ' + b"[" * depth + b"]" * depth + b"}"
    started = time.monotonic()
    answer = httpx.post(gw.url + "/v1/chat/completions", headers=key, content=body, timeout=30)
    elapsed = time.monotonic() - started
    assert answer.status_code == 400, answer.text
    message = answer.json()["error"]["message"]
    assert "nests arrays or objects too deeply" in message and message.count(".") <= 1
    assert elapsed < 2.0, f"a nested body took {elapsed:.1f} s to refuse"
    assert still_serves(gw)


def test_the_firewall_opens_the_metrics_listener_to_the_monitoring_node_only() -> None:
    from podium.files import files_for
    from podium.plan.components import BY_NAME
    from podium.render import REPO
    from podium.services.gateway.config import GatewayConfig
    from podium.stack import load_stack

    stack = load_stack(REPO / "stacks" / "single-gpu")
    assert stack.gateway is not None and stack.monitoring is not None
    node = stack.gateway.nodes[0]
    monitoring = str(stack.node(stack.monitoring.node).address)
    settings = BY_NAME["base"].settings(stack, node)
    by_port = {o["port"]: o for o in settings["openings"]}
    assert by_port[stack.gateway.port]["sources"] == [], "the API is for every client"
    metrics = by_port[stack.gateway.port + 1]
    assert metrics["sources"] == [monitoring], metrics
    rules = files_for("base", node, settings)["nftables.conf"]
    assert (f"ip saddr {{ {monitoring} }} tcp dport {stack.gateway.port + 1} accept"
            in rules), rules
    rendered = files_for("gateway", node, BY_NAME["gateway"].settings(stack, node))
    config = GatewayConfig.model_validate(yaml.safe_load(rendered["gateway.yaml"]))
    assert config.metrics_address() == ("0.0.0.0", stack.gateway.port + 1)
    assert config.connections.max_connections == stack.gateway.max_connections
    assert config.connections.write_timeout_s == stack.gateway.write_timeout_s


def test_a_metrics_port_already_taken_is_one_sentence_and_exit_2(gateways: GatewayFactory,
                                                                 scripted: Any) -> None:
    engine = scripted("flood")
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        taken = holder.getsockname()[1]
        gw = gateways.config(models={"tiny": {"replicas": [engine.url]}},
                             metrics_listen={"host": "127.0.0.1", "port": taken})
        done = subprocess.run(
            [sys.executable, "-m", "podium.services.gateway", "--config", str(gw.config_path)],
            capture_output=True, text=True, timeout=60)
    assert done.returncode == 2, done.stderr
    assert f"cannot listen on 127.0.0.1:{taken}" in done.stderr
    assert "Traceback" not in done.stderr
