"""The gateway's durable state (keys, usage, limit counters) and the threads that write it.

SQLite in WAL mode is the embedded default; PostgreSQL is used when several gateways
share keys, counters and usage. Writes never run on the event loop: operations are
queued to a few threads, and each thread commits whatever has queued up meanwhile in
one transaction (group commit), so a busy gateway pays one commit per batch.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import queue
import re
import threading
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from sqlalchemy import (
    Connection,
    Table,
    create_engine,
    event,
    inspect,
)
from sqlalchemy.engine import Engine
from sqlalchemy.exc import SQLAlchemyError

from podium.errors import InvalidInput, PodiumError
from podium.services.gateway.statements import RowInsert
from podium.services.gateway.tables import ADDED_COLUMNS, keys_table, metadata, usage_table

# user:PASSWORD@ in a URL, and password=PASSWORD in its query or a libpq keyword string.
_URL_PASSWORD = re.compile(r"(://[^/?#:@\s]*:)([^@/?#\s]*)(@)")
_KEYWORD_PASSWORD = re.compile(r"(password=)('[^']*'|\"[^\"]*\"|[^&\s]*)", re.IGNORECASE)


def redacted(text: str, url: str = "") -> str:
    """`text` with every store password hidden: in URLs and keyword strings it holds, and
    wherever the password of `url` itself appears (a driver may quote it in its error)."""
    secrets = [m.group(2) for pattern in (_URL_PASSWORD, _KEYWORD_PASSWORD) for m in pattern.finditer(url)]
    for secret in filter(None, secrets):
        text = text.replace(secret, "***")
    text = _URL_PASSWORD.sub(r"\1***\3", text)
    return _KEYWORD_PASSWORD.sub(r"\1***", text)

log = logging.getLogger("podium.gateway.store")
T = TypeVar("T")
# How often a running gateway's SQLite write-ahead log is copied into the database.
CHECKPOINT_S = 1.0
# The longest the checkpoint that restarts the log may hold up commits waiting for a reader.
RESTART_WAIT_MS = 5
PAGE_SIZE = 1024
Op = Callable[[Connection], Any]
# Where an operation's outcome goes: a thread's future (submit) or an event loop's (run).
Reply = concurrent.futures.Future[Any] | asyncio.Future[Any]
Item = tuple[Op, Reply]
Outcome = tuple[bool, Any]  # (succeeded, result or exception)

def _engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        engine = create_engine(
            url, connect_args={"check_same_thread": False, "timeout": 30}, pool_size=4
        )

        @event.listens_for(engine, "connect")
        def _pragmas(dbapi_conn: Any, _record: Any) -> None:
            # Let SQLAlchemy, not the driver, open transactions (see _begin below).
            dbapi_conn.isolation_level = None
            cur = dbapi_conn.cursor()
            # Each commit appends every page it touched to the write-ahead log, and each
            # checkpoint fsyncs that log: with 1 KiB pages a request's few small rows cost a
            # quarter of the bytes they do with 4 KiB ones, and so does the fsync, which
            # stalled the commits beside it. Only a new, empty database takes the size.
            cur.execute(f"PRAGMA page_size={PAGE_SIZE}")
            cur.execute("PRAGMA journal_mode=WAL")
            # In WAL mode NORMAL loses no committed transaction when the process is
            # killed; only a power loss can drop the last commits.
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.close()

        @event.listens_for(engine, "begin")
        def _begin(conn: Connection) -> None:
            # IMMEDIATE takes the write lock up front, so a read-then-write transaction
            # waits for another writer instead of failing with SQLITE_BUSY.
            conn.exec_driver_sql("BEGIN IMMEDIATE")

        return engine
    if url.startswith("postgresql"):
        # A store that stops answering must fail a write within seconds, so its record is
        # spooled rather than held while the client waits.
        return create_engine(url, pool_size=8, max_overflow=4, pool_pre_ping=True,
                             connect_args={"connect_timeout": 5})
    raise InvalidInput(
        f"store URL {redacted(url)!r} is not supported; use sqlite:///PATH or postgresql+psycopg://..."
    )


class Store:
    """Keys, usage and counters on one database, written by a few group-committing threads.

    Example:
        store = Store("sqlite:////var/lib/podium/gateway.db"); store.create_schema()
        keys = store.run_sync(lambda conn: conn.execute(select(keys_table)).all())
    """

    def __init__(self, url: str, *, threads: int | None = None, max_queue: int = 20000) -> None:
        self.url = url
        try:
            self.engine = _engine(url)
        except (ImportError, SQLAlchemyError) as exc:
            raise InvalidInput(
                f"store URL {redacted(url)!r} cannot be opened: {redacted(str(exc), url)}"
            ) from None
        self.is_sqlite = url.startswith("sqlite")
        # SQLite has one writer at a time; PostgreSQL takes a few concurrent batches.
        self._nthreads = threads or (1 if self.is_sqlite else 4)
        # SimpleQueue is C all the way down; queue.Queue's Python condition variable cost
        # a tenth of a millisecond per hand-off. The bound is checked in submit().
        self._queue: queue.SimpleQueue[list[Item] | None] = queue.SimpleQueue()
        self._max_queue = max_queue
        # Operations queued and not yet taken by a thread, for the bound.
        self._queued = 0
        self._count_lock = threading.Lock()
        # Operations of this turn of the event loop, handed to the threads at its end.
        self._pending: list[Item] = []
        self._threads: list[threading.Thread] = []
        self._stopping = threading.Event()
        self._checkpointer: threading.Thread | None = None

    def create_schema(self) -> None:
        for attempt in range(3):
            try:
                metadata.create_all(self.engine)
                self._migrate()
                return
            except SQLAlchemyError as exc:
                # Two gateways creating the schema at once: the loser retries and finds it.
                if attempt == 2:
                    raise PodiumError(
                        f"store {self.safe_url()} schema cannot be created: {redacted(str(exc), self.url)}"
                    ) from None

    def _migrate(self) -> None:
        """Bring a store created by an older gateway up to this schema (columns, indexes)."""
        with self.engine.begin() as conn:
            inspector = inspect(conn)
            for table, column, sql_type in ADDED_COLUMNS:
                if column not in {c["name"] for c in inspector.get_columns(table)}:
                    conn.exec_driver_sql(f"ALTER TABLE {table} ADD COLUMN {column} {sql_type}")
            for index in (*usage_table.indexes, *keys_table.indexes):
                index.create(conn, checkfirst=True)

    def safe_url(self) -> str:
        return redacted(self.engine.url.render_as_string(hide_password=True), self.url)

    def run_sync(self, op: Callable[[Connection], T]) -> T:
        """Run one operation in its own transaction on the calling thread (CLI use)."""
        try:
            with self.engine.begin() as conn:
                return op(conn)
        except SQLAlchemyError as exc:
            raise PodiumError(f"store {self.safe_url()} failed: {redacted(str(exc), self.url)}") from None

    def start(self) -> None:
        if self.is_sqlite:
            # SQLite copies its write-ahead log into the database (a checkpoint, with an
            # fsync) inside whichever commit passes 1,000 pages: every few hundred requests
            # one waited 10-30 ms for it. The store's own connections never do; a thread of
            # its own checkpoints every second instead, off every request's path.
            event.listen(self.engine, "connect", _no_checkpoints)
            self.engine.dispose()  # connections made before (schema, spool) did
        self._stopping.clear()
        for i in range(self._nthreads):
            thread = threading.Thread(target=self._work, name=f"podium-store-{i}", daemon=True)
            thread.start()
            self._threads.append(thread)
        if self.is_sqlite:
            self._checkpointer = threading.Thread(target=self._checkpoints, daemon=True,
                                                  name="podium-store-checkpoint")
            self._checkpointer.start()

    def close(self) -> None:
        self._stopping.set()
        for _ in self._threads:
            self._queue.put(None)
        for thread in self._threads:
            thread.join(timeout=30)
        self._threads.clear()
        if self._checkpointer is not None:
            self._checkpointer.join(timeout=30)
            self._checkpointer = None
        self.engine.dispose()

    def _checkpoints(self) -> None:
        raw = None
        while not self._stopping.wait(CHECKPOINT_S):
            try:
                if raw is None:
                    raw = self.engine.raw_connection()
                    # Its own short busy timeout: never handed back to the pool.
                    raw.detach()
                    _execute(raw, f"PRAGMA busy_timeout={RESTART_WAIT_MS}")
                _checkpoint(raw)
            except Exception as exc:
                log.warning("store checkpoint failed, will retry: %s", redacted(str(exc), self.url))
                if raw is not None:
                    with contextlib.suppress(Exception):
                        raw.close()
                    raw = None
        if raw is not None:
            # The last one, on the way out, so a stopped gateway leaves little log behind.
            with contextlib.suppress(Exception):
                _checkpoint(raw)
            raw.close()

    def submit(self, op: Callable[[Connection], T]) -> concurrent.futures.Future[T]:
        """Queue an operation from any thread; raises queue.Full when the store is this far
        behind."""
        self._reserve(1)
        future: concurrent.futures.Future[T] = concurrent.futures.Future()
        self._queue.put([(op, future)])
        return future

    async def run(self, op: Callable[[Connection], T]) -> T:
        """Run an operation on a store thread and wait for its transaction to commit.

        Shielded: a request cancelled meanwhile (client gone) still has its write committed.
        The operations of one turn of the event loop reach the store thread as one hand-off,
        and their results come back as one, so a busy gateway pays one thread wake-up each
        way per batch rather than per request.
        """
        self._reserve(1)
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        if not self._pending:
            loop.call_soon(self._flush)
        self._pending.append((op, future))
        return await asyncio.shield(future)

    def _reserve(self, n: int) -> None:
        with self._count_lock:
            if self._queued + n > self._max_queue:
                raise queue.Full
            self._queued += n

    def _flush(self) -> None:
        items, self._pending = self._pending, []
        self._queue.put(items)

    def _work(self) -> None:
        # Each thread keeps one connection for its life: a pool checkout, reset and (on
        # PostgreSQL) pre-ping per batch cost more than the insert itself.
        conn: Connection | None = None
        try:
            while True:
                items = self._queue.get()
                if items is None:
                    return
                batch = list(items)
                stop = False
                while len(batch) < 256:
                    try:
                        more = self._queue.get_nowait()
                    except queue.Empty:
                        break
                    if more is None:
                        stop = True
                        break
                    batch.extend(more)
                with self._count_lock:
                    self._queued -= len(batch)
                conn, outcomes = self._commit(conn, batch)
                _deliver(batch, outcomes)
                if stop:
                    return
        finally:
            if conn is not None:
                conn.close()

    def _commit(self, conn: Connection | None, batch: Sequence[Item]
                ) -> tuple[Connection | None, list[Outcome | None]]:
        """Commit a batch on the thread's connection: the connection to use next (None: new)
        and each operation's outcome (None: its caller cancelled it before it ran)."""
        outcomes: list[Outcome | None] = [None] * len(batch)
        live = [i for i, (_, reply) in enumerate(batch)
                if not isinstance(reply, concurrent.futures.Future)
                or reply.set_running_or_notify_cancel()]
        try:
            if conn is None:
                conn = self.engine.connect()
            with conn.begin():
                results = self._run_batch(conn, [batch[i][0] for i in live])
        except Exception:
            if conn is not None:
                # The connection may be what failed (a restarted server): start afresh.
                with contextlib.suppress(Exception):
                    conn.invalidate()
                    conn.close()
            # One bad operation must not fail its neighbours: run each on its own.
            for i in live:
                outcomes[i] = self._alone(batch[i][0])
            return None, outcomes
        for i, result in zip(live, results, strict=True):
            outcomes[i] = (True, result)
        return conn, outcomes

    @staticmethod
    def _run_batch(conn: Connection, ops: list[Op]) -> list[Any]:
        # Row inserts (usage records) of the batch go in per table as one executemany:
        # compiled once, one round trip, whatever the batch size.
        by_table: dict[Table, list[dict[str, Any]]] = {}
        for op in ops:
            if isinstance(op, RowInsert):
                by_table.setdefault(op.table, []).append(op.row)
        for table, rows in by_table.items():
            RowInsert.insert(table).executemany(conn, rows)
        results: list[Any] = []
        for op in ops:
            if isinstance(op, RowInsert):
                if op.then is not None:
                    op.then(conn)
                results.append(None)
            else:
                results.append(op(conn))
        return results

    def _alone(self, op: Op) -> Outcome:
        for attempt in range(2):
            try:
                with self.engine.begin() as conn:
                    return True, op(conn)
            except Exception as exc:
                # A deadlock between two gateways' batches is worth one more try.
                if attempt == 0 and "deadlock" in str(exc).lower():
                    continue
                log.warning("store operation failed: %s", exc)
                return False, exc
        raise AssertionError("unreachable")


def _checkpoint(raw: Any) -> None:
    """Copy the write-ahead log into the database, and let the next commit start it over.

    PASSIVE copies what no reader still needs and never waits for a writer, so it runs
    beside the commits. But under steady load a commit always lands while it runs, the
    log is never wholly copied when the next commit begins, and SQLite starts the log
    over only then: it grew by every commit, without end. So when PASSIVE has copied all
    it saw, RESTART copies the few frames written meanwhile, holding commits back for
    that long (about a millisecond), and waits at most RESTART_WAIT_MS for readers, so
    the next commit writes the log from its start.
    """
    busy, frames, copied = _execute(raw, "PRAGMA wal_checkpoint(PASSIVE)")
    if not busy and frames > 0 and copied == frames:
        _execute(raw, "PRAGMA wal_checkpoint(RESTART)")


def _execute(raw: Any, sql: str) -> Any:
    cursor = raw.cursor()
    try:
        cursor.execute(sql)
        return cursor.fetchone()
    finally:
        cursor.close()


def _no_checkpoints(dbapi_conn: Any, _record: Any) -> None:
    _execute(dbapi_conn, "PRAGMA wal_autocheckpoint=0")


def _deliver(batch: Sequence[Item], outcomes: Sequence[Outcome | None]) -> None:
    """Hand each outcome to its caller: one call into each event loop for all of its own."""
    by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future[Any], Outcome]]] = {}
    for (_, reply), outcome in zip(batch, outcomes, strict=True):
        if outcome is None:
            continue
        if isinstance(reply, concurrent.futures.Future):
            _settle(reply, outcome)
        else:
            by_loop.setdefault(reply.get_loop(), []).append((reply, outcome))
    for loop, replies in by_loop.items():
        with contextlib.suppress(RuntimeError):  # that loop has closed: nobody waits
            loop.call_soon_threadsafe(_settle_all, replies)


def _settle_all(replies: list[tuple[asyncio.Future[Any], Outcome]]) -> None:
    for future, outcome in replies:
        if not future.done():
            _settle(future, outcome)


def _settle(future: Reply, outcome: Outcome) -> None:
    ok, value = outcome
    if ok:
        future.set_result(value)
    else:
        future.set_exception(value)
