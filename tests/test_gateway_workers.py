"""A gateway serving from several worker processes: limits, metering, metrics and drains hold
over all of them, a worker that dies is started again, and SIGTERM stops every one.

Real gateway processes on 127.0.0.1 in front of a scripted engine (tests/scripted_engine.py),
on the tests' SQLite store and on a real PostgreSQL.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
import yaml
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.parser import text_string_to_metric_families

from podium.services.gateway.client import ReplicaAdmin
from tests.fixtures_console import ConsoleClient
from tests.fixtures_gateway import (
    GatewayFactory,
    GatewayProcess,
    PostgresServer,
    free_port,
    gateways,
    postgres_server,
    usage_rows,
)
from tests.scripted_engine import ScriptedEngine, scripted

__all__ = ["gateways", "postgres_server", "scripted"]


def where(pid: int) -> str:
    """What a process is doing now (its state and the kernel call it waits in), for a failure's
    message: a supervisor that does not start a worker again must say where it stopped."""
    try:
        state = next(line for line in Path(f"/proc/{pid}/status").read_text().splitlines()
                     if line.startswith("State:"))
        return f"{state}, waiting in {Path(f'/proc/{pid}/wchan').read_text() or '-'}"
    except OSError as e:
        return f"process {pid}: {e}"


def workers_of(gw: GatewayProcess) -> set[int]:
    """The pids of the gateway's worker processes (its children)."""
    assert gw.proc is not None
    found = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == gw.proc.pid:
                found.add(int(entry.name))
    return found


def chat(gw: GatewayProcess, key: str, text: str = "hi") -> int:
    # A new connection each: the kernel hands connections, not requests, to the workers.
    return httpx.post(gw.url + "/v1/chat/completions", timeout=30,
                      headers={"Authorization": f"Bearer {key}"},
                      json={"model": "m", "max_tokens": 2,
                            "messages": [{"role": "user", "content": text}]}).status_code


def requests_metric(gw: GatewayProcess, key: str) -> dict[str, float]:
    """podium_gateway_requests_total of one key on /metrics, by status."""
    text = httpx.get(gw.metrics_url, timeout=10).text
    return {s.labels["status"]: s.value for f in text_string_to_metric_families(text)
            if f.name == "podium_gateway_requests" for s in f.samples
            if s.name.endswith("_total") and s.labels["key"] == key}


def served_by_pid(metrics_dir: Path) -> dict[int, float]:
    """Requests each worker counted, from its own metrics file."""
    out = {}
    for path in metrics_dir.glob("counter_*.db"):
        pid = int(path.stem.removeprefix("counter_"))
        families = MultiProcessCollector._read_metrics([str(path)])
        requests = families.get("podium_gateway_requests")
        out[pid] = sum(s.value for s in requests.samples) if requests else 0.0
    return out


def fresh_minute(needed_s: float = 15.0) -> None:
    left = 60 - time.time() % 60
    if left < needed_s:
        time.sleep(left + 0.2)


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request: pytest.FixtureRequest) -> str | None:
    if request.param == "sqlite":
        return None  # the factory's SQLite file
    server: PostgresServer = request.getfixturevalue("postgres_server")
    return server.new_database()


def test_two_workers_admit_exactly_the_rpm_and_count_every_request_once(
        gateways: GatewayFactory, scripted: ScriptedEngine, store: str | None,
        tmp_path: Path) -> None:
    gw = gateways.start(models={"m": {"replicas": [scripted.url]}}, store=store, workers=2)
    assert len(workers_of(gw)) == 2
    key = gw.new_key("rpm-workers", rpm=10)
    fresh_minute()
    with ThreadPoolExecutor(12) as pool:
        answers = Counter(pool.map(lambda i: chat(gw, key, f"r{i}"), range(36)))
    assert answers == {200: 10, 429: 26}
    # /metrics, answered by one worker, sums what every worker counted.
    assert requests_metric(gw, "rpm-workers") == {"200": 10.0, "429": 26.0}
    counted = served_by_pid(tmp_path / "metrics")
    busy = [pid for pid, n in counted.items() if n and pid in workers_of(gw)]
    assert len(busy) == 2, f"requests per worker: {counted}"
    rows = usage_rows(gw.store, "rpm-workers")
    assert Counter(r["status"] for r in rows) == {200: 10}


def test_a_drain_through_one_worker_holds_in_every_worker(
        gateways: GatewayFactory) -> None:
    a = ScriptedEngine(words_per_event=1).start()
    b = ScriptedEngine(words_per_event=1).start()
    try:
        control = free_port()
        gw = gateways.start(models={"m": {"replicas": [a.url, b.url]}}, workers=2,
                            health={"interval_s": 0.5, "timeout_s": 1.0, "eject_after": 1000},
                            admin_listen={"host": "127.0.0.1", "port": control})
        key = gw.new_key("drains")
        admin = ReplicaAdmin(f"http://127.0.0.1:{control}", gw.admin_token, timeout=30)
        admin.drain(a.url)
        # Twenty connections reach both workers; none may send to the drained replica.
        with ThreadPoolExecutor(8) as pool:
            assert set(pool.map(lambda i: chat(gw, key, f"held {i}"), range(20))) == {200}
        assert not [t for t in a.sent if t.startswith("held")] and len(b.sent) >= 20
        # Every worker's view of the replica agrees, whichever answers the control call.
        views = [r for _ in range(6) for r in admin.replicas() if r["replica"] == a.url]
        assert all(v["drained"] for v in views)
        admin.undrain(a.url)
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(lambda i: chat(gw, key, f"back {i}"), range(20)))
        assert [t for t in a.sent if t.startswith("back")]
    finally:
        a.stop()
        b.stop()


def test_a_worker_that_dies_is_started_again_and_sigterm_stops_them_all(
        gateways: GatewayFactory, scripted: ScriptedEngine) -> None:
    gw = gateways.start(models={"m": {"replicas": [scripted.url]}}, workers=2)
    key = gw.new_key("crash")
    first = workers_of(gw)
    victim = min(first)
    os.kill(victim, signal.SIGKILL)
    deadline = time.monotonic() + 20
    # One reading per look: between two, the victim may be reaped before its successor forks
    # (the supervisor pauses first), and two readings would see "two workers" then "no victim".
    again = workers_of(gw)
    while time.monotonic() < deadline and (len(again) != 2 or victim in again):
        time.sleep(0.1)
        again = workers_of(gw)
    assert gw.proc is not None
    assert len(again) == 2 and victim not in again, (
        first, again, where(gw.proc.pid), gw.log()[-3000:])
    time.sleep(1.0)  # the new worker's startup
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda i: chat(gw, key, f"c{i}"), range(16)))
    assert set(answers) == {200}, (answers, gw.log()[-3000:])
    assert gw.proc is not None
    gw.proc.terminate()
    assert gw.proc.wait(30) == 0, gw.log()[-3000:]
    assert not [pid for pid in again if Path(f"/proc/{pid}").exists()]


def test_more_workers_than_cpus_is_refused_with_one_sentence(tmp_path: Path) -> None:
    config = tmp_path / "gateway.yaml"
    cores = os.cpu_count() or 1
    config.write_text(yaml.safe_dump({
        "listen": {"host": "127.0.0.1", "port": free_port()}, "workers": cores + 1,
        "store": f"sqlite:///{tmp_path / 'gw.db'}", "models": {}}))
    done = subprocess.run([sys.executable, "-m", "podium.services.gateway", "--config",
                           str(config)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert done.stderr.strip() == (
        f"error: the gateway config's workers is {cores + 1}, more than this machine's {cores}"
        f" CPUs; set workers to {cores} or fewer")


def test_the_stacks_workers_reach_the_nodes_gateway_config_and_the_clusters() -> None:
    from podium.cluster.gateway import gateway_config
    from podium.cluster.inputs import ClusterInputs
    from podium.files import files_for
    from podium.plan.components import BY_NAME
    from podium.services.gateway.config import GatewayConfig
    from podium.stack.loader import load_stack

    stack = load_stack(Path(__file__).parent / "stacks" / "labroll")
    assert stack.gateway is not None
    for workers in (1, 2):
        changed = stack.model_copy(update={
            "gateway": stack.gateway.model_copy(update={"workers": workers})})
        rendered = files_for("gateway", "ctrl", BY_NAME["gateway"].settings(changed, "ctrl"))
        config = GatewayConfig.model_validate(yaml.safe_load(rendered["gateway.yaml"]))
        assert config.workers == workers
        cluster = gateway_config(changed, ClusterInputs())
        assert cluster.get("workers", 1) == workers


def test_a_console_login_through_one_worker_holds_in_every_worker(
        gateways: GatewayFactory, scripted: ScriptedEngine) -> None:
    gw = gateways.start(models={"m": {"replicas": [scripted.url]}}, workers=2,
                        console={"sources": ["127.0.0.1/32"]})
    client = ConsoleClient(gw.port)
    assert client.login(gw.admin_token).status == 303 and client.cookie
    # A new connection each: the kernel hands them to either worker.
    pages = [client.call("GET", "/console/keys").status for _ in range(16)]
    assert pages == [200] * 16
    assert client.call("POST", "/console/logout", {"csrf": client.csrf()}).status == 303
    assert {client.call("GET", "/console/keys").status for _ in range(8)} == {303}


def test_the_connection_cap_holds_over_every_worker_together(
        gateways: GatewayFactory, scripted: ScriptedEngine) -> None:
    gw = gateways.start(models={"m": {"replicas": [scripted.url]}}, workers=2,
                        connections={"max_connections": 4, "header_timeout_s": 30})
    idle = [socket.create_connection(("127.0.0.1", gw.port), timeout=30) for _ in range(4)]
    try:
        time.sleep(0.5)  # both workers have accepted theirs
        for _ in range(4):
            with socket.create_connection(("127.0.0.1", gw.port), timeout=30) as extra:
                extra.settimeout(5)
                assert extra.recv(65536).startswith(b"HTTP/1.1 503")
    finally:
        for sock in idle:
            sock.close()
    time.sleep(0.5)
    assert httpx.get(gw.url + "/v2/health/live", timeout=10).status_code == 200
