"""What one usage record costs the gateway: its store against a bare sqlite3 commit.

The gateway commits a usage record before the last byte of every response, through the
store's writer thread (group commit). Measured in one run on one SQLite file in WAL mode:
the baseline is Python's sqlite3 inserting one row and committing, on the calling thread;
then the gateway's Store.run(record_op(...)) from an event loop, one at a time and 16 at a
time. CPU is the process's, per record.

Then the tail, one record at a time: each record's wall time (p50, p99, p99.9, worst) with
the store as it runs (its own thread checkpoints SQLite's log every second) against the same
store whose commits checkpoint the log themselves (SQLite's default, every 1,000 pages).

Last, steady load: one commit after another for --steady-seconds, as a gateway that is never
idle, with the store as it runs against the store as it was (4 KiB pages, passive checkpoints
only, which never let SQLite start the log over under steady load): the log file's size at
the end and the commits' p99 and worst, each as a ratio to the store as it was.

    .venv/bin/python bench/usage_store.py [--records 3000] [--tail-records 12000] [--steady-seconds 10]
"""

from __future__ import annotations

import argparse
import asyncio
import sqlite3
import tempfile
import time
from pathlib import Path

import uvloop

import podium.services.gateway.store as store_module
from podium.services.gateway.metering import UsageRecord, record_op
from podium.services.gateway.store import Store


def record(i: int) -> UsageRecord:
    return UsageRecord(ts=time.time(), request_id=f"{i:016x}", key_id=1, key_name="bench",
                       model="tiny", endpoint="/v1/chat/completions",
                       replica="http://127.0.0.1:8080", status=200, prompt_tokens=9,
                       completion_tokens=4, latency_ms=2.0)


def baseline(path: Path, n: int) -> tuple[float, float]:
    """Bare sqlite3: one INSERT and one COMMIT per record, WAL, synchronous=NORMAL."""
    Store(f"sqlite:///{path}").create_schema()
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    row = vars(record(0))
    sql = (f"INSERT INTO gateway_usage ({', '.join(row)}) "
           f"VALUES ({', '.join(':' + k for k in row)})")
    cpu, wall = time.process_time(), time.perf_counter()
    for i in range(n):
        conn.execute("BEGIN IMMEDIATE")
        conn.execute(sql, vars(record(i)))
        conn.execute("COMMIT")
    out = (time.process_time() - cpu) / n, (time.perf_counter() - wall) / n
    conn.close()
    return out


def through_store(path: Path, n: int, concurrency: int) -> tuple[float, float]:
    store = Store(f"sqlite:///{path}")
    store.create_schema()
    store.start()

    async def main() -> tuple[float, float]:
        async def worker(start: int) -> None:
            for i in range(start, start + n // concurrency):
                await store.run(record_op(record(i), None))

        cpu, wall = time.process_time(), time.perf_counter()
        await asyncio.gather(*(worker(k * n) for k in range(concurrency)))
        done = n // concurrency * concurrency
        return (time.process_time() - cpu) / done, (time.perf_counter() - wall) / done

    try:
        return uvloop.run(main())
    finally:
        store.close()


def tail(path: Path, n: int, checkpoint_in_commits: bool) -> list[float]:
    """Each record's wall time, one at a time, in ms, sorted."""
    from sqlalchemy import event

    store = Store(f"sqlite:///{path}")
    store.create_schema()
    store.start()
    if checkpoint_in_commits:
        @event.listens_for(store.engine, "connect")
        def _default(dbapi_conn: object, _record: object) -> None:
            dbapi_conn.execute("PRAGMA wal_autocheckpoint=1000")  # type: ignore[attr-defined]

    async def main() -> list[float]:
        out = []
        for i in range(n):
            began = time.perf_counter()
            await store.run(record_op(record(i), None))
            out.append((time.perf_counter() - began) * 1000)
        return sorted(out)

    try:
        return uvloop.run(main())
    finally:
        store.close()


def _passive_only(raw: object) -> None:
    store_module._execute(raw, "PRAGMA wal_checkpoint(PASSIVE)")


def steady(path: Path, seconds: float, as_it_was: bool) -> tuple[float, list[float]]:
    """The log file's size in MB after `seconds` of back-to-back commits, and each commit's
    wall time in ms, sorted."""
    now = store_module._checkpoint, store_module.PAGE_SIZE
    if as_it_was:
        store_module._checkpoint, store_module.PAGE_SIZE = _passive_only, 4096
    try:
        store = Store(f"sqlite:///{path}")
        store.create_schema()
        store.start()
        took = []
        deadline, i = time.monotonic() + seconds, 0
        try:
            while time.monotonic() < deadline:
                began = time.perf_counter()
                store.submit(record_op(record(i), None)).result(timeout=60)
                took.append((time.perf_counter() - began) * 1000)
                i += 1
            # Before close: the last connection to close copies the log and removes it.
            log_mb = path.with_name(path.name + "-wal").stat().st_size / 1e6
        finally:
            store.close()
    finally:
        store_module._checkpoint, store_module.PAGE_SIZE = now
    return log_mb, sorted(took)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=3000)
    parser.add_argument("--tail-records", type=int, default=12000)
    parser.add_argument("--steady-seconds", type=float, default=10.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="podium-bench-") as tmp:
        root = Path(tmp)
        base_cpu, base_wall = baseline(root / "bare.db", args.records)
        rows = [("bare sqlite3, one commit each", base_cpu, base_wall)]
        for c in (1, 16):
            cpu, wall = through_store(root / f"store{c}.db", args.records, c)
            rows.append((f"gateway store, {c} at a time", cpu, wall))
        tails = [(name, tail(root / f"tail{k}.db", args.tail_records, k))
                 for k, name in ((True, "commits checkpoint (SQLite's default)"),
                                 (False, "a thread checkpoints (the store now)"))]
        steadies = [(name, *steady(root / f"steady{k}.db", args.steady_seconds, k))
                    for k, name in ((True, "as it was (4 KiB, passive only)"),
                                    (False, "the store now (1 KiB, RESTART)"))]
    print(f"{'per usage record':32} {'CPU us':>8} {'wall us':>8} {'CPU/bare':>9} {'wall/bare':>9}")
    for name, cpu, wall in rows:
        print(f"{name:32} {cpu * 1e6:8.0f} {wall * 1e6:8.0f} {cpu / base_cpu:8.2f}x"
              f" {wall / base_wall:8.2f}x")
    print(f"\n{'one at a time, ms per record':38} {'p50':>6} {'p99':>6} {'p99.9':>6} {'worst':>6}")
    for name, ms in tails:
        at = [ms[min(len(ms) - 1, int(q * len(ms)))] for q in (0.5, 0.99, 0.999)]
        print(f"{name:38} {at[0]:6.2f} {at[1]:6.2f} {at[2]:6.2f} {ms[-1]:6.2f}")
    print(f"\n{f'steady load, {args.steady_seconds:.0f} s':32} {'commits':>8} {'log MB':>8}"
          f" {'p99 ms':>7} {'worst ms':>8} {'log/was':>8} {'p99/was':>8}")
    was_log, was_ms = steadies[0][1], steadies[0][2]
    for name, log_mb, ms in steadies:
        p99 = ms[int(0.99 * len(ms))]
        print(f"{name:32} {len(ms):8} {log_mb:8.1f} {p99:7.2f} {ms[-1]:8.1f}"
              f" {log_mb / was_log:7.2f}x {p99 / was_ms[int(0.99 * len(was_ms))]:7.2f}x")


if __name__ == "__main__":
    main()
