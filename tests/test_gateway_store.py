"""The gateway store's writer threads (a held connection that recovers, bounded queue,
batches) and its checkpoints (a log that starts over under load, small pages)."""

from __future__ import annotations

import asyncio
import queue
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Connection, event, func, select, text

from podium.services.gateway.metering import UsageRecord, record_op
from podium.services.gateway.store import Store
from podium.services.gateway.tables import usage_table


def _record(i: int) -> UsageRecord:
    return UsageRecord(ts=time.time(), request_id=f"r{i}", key_id=1, key_name="k", model="m",
                       endpoint="/v1/chat/completions", replica="http://127.0.0.1:1", status=200,
                       prompt_tokens=3, completion_tokens=i, latency_ms=1.0)


def _count(conn: Connection) -> int:
    return int(conn.execute(select(func.count()).select_from(usage_table)).scalar_one())


async def _write(store: Store, start: int, n: int) -> None:
    await asyncio.gather(*(store.run(record_op(_record(i), None)) for i in range(start, start + n)))


def test_a_store_thread_reconnects_after_postgresql_drops_its_connection(
    postgres_url: str,
) -> None:
    store = Store(postgres_url, threads=1)
    store.create_schema()
    store.start()
    try:
        asyncio.run(_write(store, 0, 5))
        # Every other backend of this database goes, the writer's held connection with it.
        store.run_sync(lambda conn: conn.execute(text(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE datname = current_database() AND pid <> pg_backend_pid()")))
        asyncio.run(_write(store, 5, 5))
        assert store.run_sync(_count) == 10
        rows = store.run_sync(lambda c: c.execute(select(usage_table.c.request_id)).scalars().all())
        assert sorted(rows) == sorted(f"r{i}" for i in range(10))
    finally:
        store.close()


def test_one_failing_operation_does_not_fail_its_batch_neighbours(tmp_path: Path) -> None:
    store = Store(f"sqlite:///{tmp_path / 'g.db'}")
    store.create_schema()
    # Queued before the thread starts, so all of them land in one batch.
    good = [store.submit(record_op(_record(i), None)) for i in range(3)]

    def broken(conn: Connection) -> None:
        conn.execute(text("INSERT INTO no_such_table VALUES (1)"))

    bad = store.submit(broken)
    store.start()
    try:
        for fut in good:
            assert fut.result(timeout=10) is None
        with pytest.raises(Exception, match="no_such_table"):
            bad.result(timeout=10)
        assert store.run_sync(_count) == 3
    finally:
        store.close()


def test_the_write_queue_is_bounded_and_says_so(tmp_path: Path) -> None:
    store = Store(f"sqlite:///{tmp_path / 'g.db'}", max_queue=4)
    store.create_schema()
    # No writer thread: nothing drains the queue, so the fifth submission finds it full.
    for i in range(4):
        store.submit(record_op(_record(i), None))
    with pytest.raises(queue.Full):
        store.submit(record_op(_record(4), None))
    store.start()
    store.close()  # the four queued before the bound are committed on the way out
    assert store.run_sync(_count) == 4


def test_records_from_many_threads_are_all_committed_once(tmp_path: Path) -> None:
    store = Store(f"sqlite:///{tmp_path / 'g.db'}")
    store.create_schema()
    store.start()
    try:
        futures = []
        lock = threading.Lock()

        def submit(base: int) -> None:
            for i in range(base, base + 100):
                fut = store.submit(record_op(_record(i), None))
                with lock:
                    futures.append(fut)

        threads = [threading.Thread(target=submit, args=(b,)) for b in range(0, 800, 100)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        for fut in futures:
            fut.result(timeout=30)
        assert store.run_sync(_count) == 800
    finally:
        store.close()


def test_one_event_loop_turn_is_one_transaction_and_each_caller_gets_its_own_outcome(
    tmp_path: Path,
) -> None:
    store = Store(f"sqlite:///{tmp_path / 'g.db'}")
    store.create_schema()
    begun = 0

    @event.listens_for(store.engine, "begin")
    def _count_transactions(conn: Connection) -> None:
        nonlocal begun
        begun += 1

    def broken(conn: Connection) -> None:
        conn.execute(text("INSERT INTO no_such_table VALUES (1)"))

    async def turn(ops: list[Any]) -> list[object]:
        calls = [asyncio.ensure_future(store.run(op)) for op in ops]
        if not store._threads:
            await asyncio.sleep(0.05)  # all of them queued before the thread starts
            store.start()
        return await asyncio.gather(*calls, return_exceptions=True)

    async def main() -> tuple[list[object], int, list[object]]:
        first = await turn([record_op(_record(i), None) for i in range(8)] + [_count])
        after_first = begun
        second = await turn([record_op(_record(i), None) for i in range(8, 12)]
                            + [broken, _count])
        return first, after_first, second

    try:
        first, after_first, second = asyncio.run(main())
        # One turn of the loop, one hand-off, one transaction for all nine.
        assert first == [None] * 8 + [8] and after_first == 1
        # A failing operation fails only itself: the batch is retried one by one.
        assert second[:4] == [None] * 4 and second[5] == 12
        assert "no_such_table" in str(second[4])
        assert begun == 1 + 1 + 6
        assert store.run_sync(_count) == 12
    finally:
        store.close()


@pytest.mark.parametrize("engine", ["sqlite", "postgresql"])
def test_a_store_made_before_teams_budgets_rotation_and_audit_is_brought_up_to_date(
    engine: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """An older gateway's store: its keys keep working and take the new settings."""
    from podium.services.gateway.keys import (
        KeySpec,
        create_op,
        hash_secret,
        lookup_op,
        rotate_op,
        update_op,
    )
    from podium.services.gateway.teams import put_op

    url = (f"sqlite:///{tmp_path / 'old.db'}" if engine == "sqlite"
           else request.getfixturevalue("postgres_server").new_database())
    old = Store(url)
    old.create_schema()
    old.run_sync(create_op(KeySpec(name="veteran", rpm=5), "pdm-veteran-secret-0123456789"))
    with old.engine.begin() as conn:  # as the gateway before this change left it
        for column in ("disabled_at", "previous_hash", "previous_until", "team", "budget",
                       "budget_period"):
            if column == "previous_hash":
                conn.execute(text("DROP INDEX ix_gateway_keys_previous_hash"))
            conn.execute(text(f"ALTER TABLE gateway_keys DROP COLUMN {column}"))
        conn.execute(text("DROP TABLE gateway_teams"))
        conn.execute(text("DROP TABLE gateway_audit"))
    old.engine.dispose()
    store = Store(url)
    store.create_schema()
    try:
        store.run_sync(put_op("crew", {"budget": "3/month"}))
        key = store.run_sync(update_op("veteran", {"team": "crew", "budget": "1/day"}))
        assert (key.rpm, key.team, key.budget, key.budget_period) == (5, "crew", 1.0, "day")
        store.run_sync(rotate_op("veteran", "pdm-veteran-secret-new-0123456789", 60))
        found = store.run_sync(lookup_op(hash_secret("pdm-veteran-secret-0123456789")))
        assert found is not None and found.by_previous and found.team_limits is not None
        assert found.state(time.time()) == "active"
    finally:
        store.engine.dispose()


def test_commits_never_checkpoint_sqlites_log_a_thread_of_the_store_does(tmp_path: Path) -> None:
    import sqlite3

    path = tmp_path / "g.db"
    store = Store(f"sqlite:///{path}")
    store.create_schema()
    store.start()
    try:
        # The store threads' connections leave the write-ahead log to the checkpoint thread,
        # so no request's commit waits for a checkpoint's copy and fsync.
        every = store.submit(lambda conn: conn.exec_driver_sql("PRAGMA wal_autocheckpoint").scalar())
        assert every.result(timeout=30) == 0
        for fut in [store.submit(record_op(_record(i), None)) for i in range(50)]:
            fut.result(timeout=30)
        # Read the database file alone (immutable: no log): the records are there once the
        # checkpoint thread has run, without 1,000 pages of log to set one off.
        deadline = time.monotonic() + 10
        found = 0
        while time.monotonic() < deadline and found < 50:
            time.sleep(0.2)
            with sqlite3.connect(f"file:{path}?immutable=1", uri=True) as db:
                found = db.execute("SELECT count(*) FROM gateway_usage").fetchone()[0]
        assert found == 50
    finally:
        store.close()


def _steady_commits(store: Store, seconds: float) -> list[float]:
    """Commit one record after another for `seconds`, as a gateway under steady load does;
    each commit's time in seconds."""
    took: list[float] = []
    deadline = time.monotonic() + seconds
    i = 0
    while time.monotonic() < deadline:
        began = time.monotonic()
        store.submit(record_op(_record(i), None)).result(timeout=60)
        took.append(time.monotonic() - began)
        i += 1
    return took


@pytest.fixture
def busy_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Store]:
    """A started SQLite store at tmp_path/g.db that checkpoints every 50 ms, so under steady
    commits every checkpoint overlaps a commit."""
    import podium.services.gateway.store as store_module

    monkeypatch.setattr(store_module, "CHECKPOINT_S", 0.05)
    store = Store(f"sqlite:///{tmp_path / 'g.db'}")
    store.create_schema()
    store.start()
    try:
        yield store
    finally:
        store.close()


def test_the_log_starts_over_under_steady_commits_so_it_stays_bounded(
        busy_store: Store, tmp_path: Path) -> None:
    from podium.services.gateway.store import PAGE_SIZE

    took = _steady_commits(busy_store, 3.0)
    written = len(took) * PAGE_SIZE  # at least one page per commit
    log = (tmp_path / "g.db-wal").stat().st_size
    # Had the log never started over, it would hold every commit's pages.
    assert len(took) > 1000
    assert log < written / 4, (log, written)


def test_a_long_report_never_holds_commits_up_while_the_log_is_started_over(
        busy_store: Store, tmp_path: Path) -> None:
    import sqlite3

    store = busy_store
    reader = sqlite3.connect(tmp_path / "g.db", isolation_level=None)
    try:
        _steady_commits(store, 0.3)
        # A long report, begun after the last commit: the checkpoints that run while no
        # commit comes copy the whole log, and the one that would start it over must wait
        # for this reader, holding commits back meanwhile: only a few ms, then it gives up.
        reader.execute("BEGIN")
        reader.execute("SELECT count(*) FROM gateway_usage").fetchone()
        time.sleep(0.3)
        took = _steady_commits(store, 1.5)
        reader.execute("COMMIT")
        took += _steady_commits(store, 0.5)
        assert max(took) < 0.5, max(took)
    finally:
        reader.close()


def test_a_new_store_has_small_pages_and_an_old_store_keeps_its_own(tmp_path: Path) -> None:
    import sqlite3

    from podium.services.gateway.store import PAGE_SIZE

    old = tmp_path / "old.db"
    with sqlite3.connect(old) as db:  # made by a gateway before pages were made smaller
        db.execute("PRAGMA page_size=4096")
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("CREATE TABLE gateway_note (x INTEGER)")
    for path, pages in ((tmp_path / "new.db", PAGE_SIZE), (old, 4096)):
        store = Store(f"sqlite:///{path}")
        store.create_schema()
        store.start()
        try:
            for fut in [store.submit(record_op(_record(i), None)) for i in range(20)]:
                fut.result(timeout=30)
            size = store.submit(lambda conn: conn.exec_driver_sql("PRAGMA page_size").scalar())
            assert size.result(timeout=30) == pages
            assert store.run_sync(_count) == 20
        finally:
            store.close()
