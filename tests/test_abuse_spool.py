"""Usage records survive PostgreSQL going away and the gateway being killed: spooled, replayed once."""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from sqlalchemy import func, select

from podium.services.gateway.metering import UsageRecord
from podium.services.gateway.spool import SPOOL_NAME, UsageSpool, spool_entry
from podium.services.gateway.store import Store
from podium.services.gateway.tables import counters_table
from tests.fixtures_gateway import (
    GatewayFactory,
    GatewayProcess,
    PostgresServer,
    gateways,
    remove_postgres,
    run_postgres,
    usage_rows,
)
from tests.scripted_engine import ScriptedEngine, scripted

__all__ = ["gateways", "scripted"]


@pytest.fixture
def own_postgres() -> Iterator[PostgresServer]:
    """A PostgreSQL server of this test's own, which it may stop and start."""
    server = run_postgres()
    try:
        yield server
    finally:
        remove_postgres(server)


def stream_to_end(gw: GatewayProcess, key: str, content: str) -> tuple[str, bool]:
    """(request id, whether the stream completed: all its events and [DONE], no error)."""
    body = {"model": "scripted", "stream": True,
            "messages": [{"role": "user", "content": content}]}
    with httpx.stream("POST", gw.url + "/v1/chat/completions", json=body, timeout=60,
                      headers={"Authorization": f"Bearer {key}"}) as resp:
        request_id = resp.headers.get("x-request-id", "")
        completed = False
        try:
            for line in resp.iter_lines():
                if line == "data: [DONE]":
                    completed = True
                elif line.startswith("data: ") and "error" in json.loads(line[6:]):
                    return request_id, False
        except httpx.HTTPError:
            return request_id, False
    return request_id, completed and resp.status_code == 200


def spooled_gateway(gateways: GatewayFactory, engine: ScriptedEngine,
                    postgres: PostgresServer) -> GatewayProcess:
    return gateways.start(models={"scripted": {"kind": "llm", "replicas": [engine.url]}},
                          store=postgres.new_database(), usage={"spool_retry_s": 0.5})


def run_while_the_store_stops(gw: GatewayProcess, engine: ScriptedEngine, key: str,
                              postgres: PostgresServer, n: int = 6,
                              kill_after: bool = False) -> list[str]:
    """Stream `n` requests (about a second each) and stop PostgreSQL while they run.

    With `kill_after`, three more streams are still running when the last of the `n` ends,
    and the gateway is killed then: they never complete, so they need no record.
    """
    with ThreadPoolExecutor(n + 3) as pool:
        futures = [pool.submit(stream_to_end, gw, key, f"usage {i}") for i in range(n)]
        unfinished = [pool.submit(stream_to_end, gw, key, f"slow {i}")
                      for i in range(3 if kill_after else 0)]
        deadline = time.monotonic() + 10
        while len(engine.sent) < n + len(unfinished):  # every one at the engine, none done
            assert time.monotonic() < deadline, f"{engine.sent}\n{gw.log()}"
            time.sleep(0.02)
        postgres.stop()
        results = [f.result() for f in futures]
        if kill_after:
            gw.kill()
            assert not any(f.result()[1] for f in unfinished)
    assert all(completed for _, completed in results), f"{results}\n{gw.log()}"
    return [request_id for request_id, _ in results]


def records_by_id(store: str, key_name: str) -> Counter[str]:
    return Counter(row["request_id"] for row in usage_rows(store, key_name))


def tpm_charged(store_url: str) -> int:
    store = Store(store_url)
    try:
        return int(store.run_sync(lambda conn: conn.execute(
            select(func.sum(counters_table.c.value)).where(counters_table.c.kind == "tpm"))
            .scalar()) or 0)
    finally:
        store.engine.dispose()


def spool_of(gw: GatewayProcess) -> Path:
    return gw.config_path.parent / SPOOL_NAME


def test_records_survive_postgresql_stopping_mid_run(
        gateways: GatewayFactory, scripted: ScriptedEngine, own_postgres: PostgresServer) -> None:
    gw = spooled_gateway(gateways, scripted, own_postgres)
    key = gw.new_key("spooled", tpm=1_000_000)
    completed = run_while_the_store_stops(gw, scripted, key, own_postgres)
    spool = spool_of(gw)
    assert spool.stat().st_mode & 0o777 == 0o600
    assert len(spool.read_bytes().splitlines()) == len(completed)
    own_postgres.start()
    deadline = time.monotonic() + 20
    while records_by_id(gw.store, "spooled") != Counter(completed):
        assert time.monotonic() < deadline, f"spool not replayed:\n{gw.log()}"
        time.sleep(0.2)
    rows = usage_rows(gw.store, "spooled")
    tokens = sum(r["prompt_tokens"] + r["completion_tokens"] for r in rows)
    assert tokens == sum(p + c for p, c in scripted.sent.values())
    # Each reservation was settled exactly once, by its record's replay.
    assert tpm_charged(gw.store) == tokens
    # A gateway killed and started again finds nothing more to replay.
    gw.kill()
    gw.start()
    time.sleep(1.5)
    assert records_by_id(gw.store, "spooled") == Counter(completed)
    assert tpm_charged(gw.store) == tokens
    assert spool.read_bytes() == b""


def test_records_spooled_before_a_sigkill_are_replayed_on_start(
        gateways: GatewayFactory, scripted: ScriptedEngine, own_postgres: PostgresServer) -> None:
    gw = spooled_gateway(gateways, scripted, own_postgres)
    key = gw.new_key("killed")
    completed = run_while_the_store_stops(gw, scripted, key, own_postgres, kill_after=True)
    own_postgres.start()
    gw.start()  # replays the spool before it serves
    assert records_by_id(gw.store, "killed") == Counter(completed)
    assert spool_of(gw).read_bytes() == b""


def test_a_torn_line_or_a_record_the_store_refuses_holds_back_no_other(
        tmp_path: Path) -> None:
    spool = UsageSpool(tmp_path / "state")
    store = Store(f"sqlite:///{tmp_path / 'usage.db'}")
    store.create_schema()

    def record(i: int) -> UsageRecord:
        return UsageRecord(ts=time.time(), request_id=f"spooled-{i}", key_id=1,
                           key_name="k", model="m", endpoint="/v1/chat/completions",
                           status=200, prompt_tokens=3, completion_tokens=i)

    spool.append(spool_entry(record(1), None))
    with spool.path.open("ab") as torn:  # a gateway killed while writing its line
        torn.write(b'{"record": {"ts": 1.0, "request_')
    spool.append(spool_entry(record(2), None))
    # A record no store can take (written by a gateway of another version, say).
    spool.append(spool_entry(record(3), None).replace(b'"status"', b'"no_such_field"'))
    spool.append(spool_entry(record(4), None))
    assert spool.replay(store) == 3
    assert sorted(r["request_id"] for r in usage_rows(store.url, "k")) == [
        "spooled-1", "spooled-2", "spooled-4"]
    assert spool.path.read_bytes() == b""
    assert b"spooled-3" in spool.rejected.read_bytes()
    assert spool.rejected.stat().st_mode & 0o777 == 0o600
    assert spool.replay(store) == 0
