"""Draining an engine replica through the gateway's control listener, a gateway's graceful stop,
and a gateway restarted on the API socket systemd holds for it.

Real gateway processes on 127.0.0.1 in front of two scripted engines (tests/scripted_engine.py),
each of which records the requests it served, so a test sees exactly which replica got what.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from podium.errors import InvalidInput
from podium.services.gateway.client import ReplicaAdmin
from tests.fixtures_gateway import GatewayFactory, GatewayProcess, free_port, gateways, wait_http
from tests.scripted_engine import ScriptedEngine

__all__ = ["gateways"]

# Probes every half second, but a replica is never ejected: routing is the drain's alone here.
HEALTH = {"interval_s": 0.5, "timeout_s": 1.0, "eject_after": 1000}


@pytest.fixture
def engines() -> Iterator[tuple[ScriptedEngine, ScriptedEngine]]:
    """Two replicas of one model; a stream of ten events takes about three seconds on each."""
    a = ScriptedEngine(words_per_event=1, interval_s=0.3).start()
    b = ScriptedEngine(words_per_event=1, interval_s=0.3).start()
    try:
        yield a, b
    finally:
        a.stop()
        b.stop()


def start(gateways: GatewayFactory, engines: tuple[ScriptedEngine, ...], **settings: Any
          ) -> tuple[GatewayProcess, str, ReplicaAdmin]:
    control = free_port()
    gw = gateways.start(models={"m": {"replicas": [e.url for e in engines]}}, health=HEALTH,
                        admin_listen={"host": "127.0.0.1", "port": control}, **settings)
    key = gw.new_key("client")
    base = f"http://127.0.0.1:{control}"
    return gw, key, ReplicaAdmin(base, gw.admin_token, timeout=60)


def chat(gw: GatewayProcess, key: str, text: str) -> httpx.Response:
    return httpx.post(gw.url + "/v1/chat/completions", timeout=30,
                      headers={"Authorization": f"Bearer {key}"},
                      json={"model": "m", "max_tokens": 3,
                            "messages": [{"role": "user", "content": text}]})


class Stream(threading.Thread):
    """One streamed chat read to its end in the background; `started` is set at its first event."""

    def __init__(self, gw: GatewayProcess, key: str, text: str) -> None:
        super().__init__(daemon=True)
        self.gw, self.key, self.text = gw, key, text
        self.started = threading.Event()
        self.status = 0
        self.body = b""
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            with httpx.stream("POST", self.gw.url + "/v1/chat/completions", timeout=60,
                              headers={"Authorization": f"Bearer {self.key}"},
                              json={"model": "m", "stream": True,
                                    "messages": [{"role": "user", "content": self.text}]}) as resp:
                self.status = resp.status_code
                for chunk in resp.iter_bytes():
                    self.body += chunk
                    self.started.set()
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            self.error = exc
        finally:
            self.started.set()


def running(gw: GatewayProcess, key: str, text: str) -> Stream:
    """A stream started in the background, once its first event has arrived."""
    stream = Stream(gw, key, text)
    stream.start()
    assert stream.started.wait(15), "the stream never started"
    return stream


def drained(control: ReplicaAdmin) -> dict[str, bool]:
    return {r["replica"]: r["drained"] for r in control.replicas()}


def served_by(engines: tuple[ScriptedEngine, ...], text: str) -> list[int]:
    return [i for i, e in enumerate(engines) if text in e.sent]


def test_a_drained_replica_finishes_its_stream_takes_nothing_new_and_returns_when_undrained(
    gateways: GatewayFactory, engines: tuple[ScriptedEngine, ScriptedEngine]
) -> None:
    gw, key, control = start(gateways, engines)
    stream = running(gw, key, "usage long answer")
    [busy] = served_by(engines, "usage long answer")
    other = 1 - busy
    target = engines[busy].url

    drained: dict[str, Any] = {}
    began = time.monotonic()
    drainer = threading.Thread(target=lambda: drained.update(control.drain(target, wait_s=20)))
    drainer.start()
    time.sleep(0.3)  # the drain is in force, its stream still running
    for n in range(6):
        answer = chat(gw, key, f"during {n}")
        assert answer.status_code == 200, answer.text
        assert served_by(engines, f"during {n}") == [other], f"request {n} went to the drained replica"
    drainer.join(30)
    waited = time.monotonic() - began
    stream.join(30)

    # The drain answered only when the stream it held had ended, and that stream ended whole.
    assert drained["in_flight"] == 0 and drained["drained"], drained
    assert stream.error is None and stream.status == 200
    assert stream.body.count(b'"content"') == 10 and stream.body.endswith(b"data: [DONE]\n\n")
    assert waited > 1.0, f"the drain answered after {waited:.1f} s, before its stream could end"

    back = control.undrain(target)
    assert back == {"replica": target, "models": ["m"], "healthy": True, "drained": False,
                    "in_flight": 0}
    for n in range(6):
        assert chat(gw, key, f"after {n}").status_code == 200
    after = [served_by(engines, f"after {n}")[0] for n in range(6)]
    assert after.count(busy) >= 2, f"the undrained replica got {after.count(busy)} of 6 requests"


def test_a_drain_that_is_never_lifted_ends_by_itself(
    gateways: GatewayFactory, engines: tuple[ScriptedEngine, ScriptedEngine]
) -> None:
    gw, key, control = start(gateways, engines)
    control.drain(engines[0].url, hold_s=1.0)
    assert drained(control) == {engines[0].url: True, engines[1].url: False}
    assert chat(gw, key, "held").status_code == 200 and served_by(engines, "held") == [1]
    time.sleep(1.2)
    assert drained(control) == {engines[0].url: False, engines[1].url: False}


def test_draining_every_replica_answers_503_and_retry(
    gateways: GatewayFactory, engines: tuple[ScriptedEngine, ScriptedEngine]
) -> None:
    gw, key, control = start(gateways, engines)
    for engine in engines:
        control.drain(engine.url)
    answer = chat(gw, key, "nowhere")
    assert answer.status_code == 503 and "retry" in answer.json()["error"]["message"]
    assert served_by(engines, "nowhere") == []


def test_drain_needs_the_admin_token_and_is_not_on_the_api_or_metrics_port(
    gateways: GatewayFactory, engines: tuple[ScriptedEngine, ScriptedEngine]
) -> None:
    gw, key, control = start(gateways, engines)
    body = {"replica": engines[0].url}
    for token in (None, "pdm-admin-wrong", key):
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        refused = httpx.post(control.base + "/admin/v1/replicas/drain", json=body, headers=headers,
                             timeout=10)
        assert refused.status_code == 401, (token, refused.text)
    admin = {"Authorization": f"Bearer {gw.admin_token}"}
    for base in (gw.url, gw.metrics_url.removesuffix("/metrics")):
        elsewhere = httpx.post(base + "/admin/v1/replicas/drain", json=body, headers=admin, timeout=10)
        assert elsewhere.status_code == 404, (base, elsewhere.text)
    assert set(drained(control).values()) == {False}
    with pytest.raises(InvalidInput, match=r"replica 'http://127.0.0.1:1' is not behind this gateway"):
        control.drain("http://127.0.0.1:1")


@pytest.mark.parametrize("workers", [1, 2])
def test_sigterm_lets_an_inflight_stream_finish_then_exits(
    gateways: GatewayFactory, engines: tuple[ScriptedEngine, ScriptedEngine], workers: int
) -> None:
    gw, key, _ = start(gateways, engines, workers=workers)
    stream = running(gw, key, "usage to the end")
    assert gw.proc is not None
    gw.proc.send_signal(signal.SIGTERM)
    time.sleep(0.3)
    with pytest.raises(httpx.ConnectError):  # a stopping gateway takes no new connection
        chat(gw, key, "too late")
    stream.join(30)
    assert stream.error is None and stream.status == 200
    assert stream.body.count(b'"content"') == 10 and stream.body.endswith(b"data: [DONE]\n\n")
    # uvicorn ends by raising the signal it caught again, as systemd expects of a clean stop.
    assert gw.proc.wait(15) in (0, -signal.SIGTERM)


def test_sigterm_waits_no_longer_than_the_shutdown_grace(
    gateways: GatewayFactory, engines: tuple[ScriptedEngine, ScriptedEngine]
) -> None:
    gw, key, _ = start(gateways, engines, shutdown_grace_s=1)
    stream = running(gw, key, "slow and endless")  # 300 events: 90 s
    assert gw.proc is not None
    began = time.monotonic()
    gw.proc.send_signal(signal.SIGTERM)
    gw.proc.wait(20)
    took = time.monotonic() - began
    assert took < 8, f"the gateway took {took:.1f} s to stop with a 1 s shutdown grace"
    stream.join(30)
    assert not stream.body.endswith(b"data: [DONE]\n\n")


def on_held_socket(gw: GatewayProcess, held: socket.socket, log: Path) -> subprocess.Popen[bytes]:
    """The gateway as systemd starts it from podium-gateway.socket: the API's listening socket,
    which this test holds as systemd would, passed as fd 3 with LISTEN_PID and LISTEN_FDS."""
    with log.open("ab") as out:
        proc = subprocess.Popen(
            ["bash", "-c", 'exec 3<&"$HELD"; export LISTEN_PID=$$ LISTEN_FDS=1; exec "$@"', "bash",
             sys.executable, "-m", "podium.services.gateway", "--config", str(gw.config_path),
             "--log-level", "warning"],
            env={**os.environ, "HELD": str(held.fileno())}, pass_fds=(held.fileno(),),
            stdout=out, stderr=subprocess.STDOUT,
        )
    wait_http(gw.url + "/v2/health/live", proc=proc)
    return proc


@pytest.mark.parametrize("workers", [1, 2])
def test_a_gateway_restarted_on_its_held_socket_refuses_no_request(
    gateways: GatewayFactory, engines: tuple[ScriptedEngine, ScriptedEngine], tmp_path: Path,
    workers: int,
) -> None:
    gw = gateways.config(models={"m": {"replicas": [e.url for e in engines]}}, health=HEALTH,
                         workers=workers)
    held = socket.create_server(("127.0.0.1", gw.port), backlog=128)
    log = tmp_path / "held-gateway.log"
    first = on_held_socket(gw, held, log)
    later: subprocess.Popen[bytes] | None = None
    key = gw.new_key("client")
    answers: list[tuple[float, float, int | str]] = []  # (sent at, answered at, status or error)
    stop = threading.Event()

    def load() -> None:  # one keep-alive client, at most 30 s and 3000 requests
        with httpx.Client(timeout=30, headers={"Authorization": f"Bearer {key}"}) as client:
            deadline = time.monotonic() + 30
            while not stop.is_set() and time.monotonic() < deadline and len(answers) < 3000:
                body = {"model": "m", "max_tokens": 3, "messages": [{"role": "user", "content": "hi"}]}
                sent = time.monotonic()
                try:
                    status: int | str = client.post(gw.url + "/v1/chat/completions", json=body).status_code
                except httpx.HTTPError as exc:
                    status = f"{type(exc).__name__}: {exc}"
                answers.append((sent, time.monotonic(), status))
                time.sleep(0.01)

    client = threading.Thread(target=load, daemon=True)
    try:
        client.start()
        time.sleep(1)
        first.send_signal(signal.SIGTERM)
        assert first.wait(15) in (0, -signal.SIGTERM)
        time.sleep(0.5)  # no process accepts: connections wait in the held socket's queue
        relaunched = time.monotonic()
        later = on_held_socket(gw, held, log)
        time.sleep(2)
    finally:
        stop.set()
        client.join(40)
        for proc in (first, later):
            if proc is not None and proc.poll() is None:
                proc.terminate()
                proc.wait(15)
        held.close()
    failed = [a for _, _, a in answers if a != 200]
    assert not failed, f"{len(failed)} of {len(answers)} requests failed across the restart: {failed[:5]}"
    # Sent before the first gateway had gone and answered after: it waited for the next one.
    assert any(sent < relaunched < done for sent, done, _ in answers), answers
    assert any(sent > relaunched for sent, _, _ in answers), answers
