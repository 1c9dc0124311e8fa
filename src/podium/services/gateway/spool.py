"""Usage records the store could not take, kept in a local append-only file until it can.

Each record is one JSON line, written and fsync'd before the response it bills is
finished, in a 0600 file in the gateway's state directory. The spool is offered to the
store on start and every few seconds while it is not empty; a record whose request_id the
store already holds is skipped, so a record committed just before its connection broke,
or a spool replayed twice, is never counted twice.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, select

from podium.services.gateway.metering import UsageRecord, record_op
from podium.services.gateway.reservation import Reservation
from podium.services.gateway.store import Store
from podium.services.gateway.tables import usage_table

log = logging.getLogger("podium.gateway")
SPOOL_NAME = "usage-spool.jsonl"
REJECTED_NAME = "usage-spool.rejected.jsonl"
_BATCH = 500


def spool_entry(record: UsageRecord, reservation: Reservation | None) -> bytes:
    entry = {"record": dict(vars(record)),
             "reservation": None if reservation is None else reservation.to_json()}
    return json.dumps(entry, separators=(",", ":")).encode() + b"\n"


def replay_op(entries: list[dict[str, Any]]) -> Callable[[Connection], int]:
    """Commit spooled records the store does not hold yet (by request_id); how many went in."""

    def op(conn: Connection) -> int:
        ids = [e["record"]["request_id"] for e in entries]
        held = set(conn.execute(select(usage_table.c.request_id)
                                .where(usage_table.c.request_id.in_(ids))).scalars())
        added = 0
        for entry in entries:
            record = UsageRecord(**entry["record"])
            if record.request_id in held:
                continue
            held.add(record.request_id)
            raw = entry.get("reservation")
            record_op(record, None if raw is None else Reservation.from_json(raw))(conn)
            added += 1
        return added

    return op


class UsageSpool:
    """The gateway's spool file; every method blocks (run it off the event loop).

    Example: UsageSpool(Path("/var/lib/podium/gateway")).append(spool_entry(record, None))
    """

    def __init__(self, state_dir: Path) -> None:
        self.path = state_dir / SPOOL_NAME
        # Records the store refused while it answered, for an operator to look at.
        self.rejected = state_dir / REJECTED_NAME

    def _open(self, flags: int) -> int:
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(self.path, flags | os.O_CREAT, 0o600)
        # Two gateways may share a state directory: appends and replays take turns.
        fcntl.flock(fd, fcntl.LOCK_EX)
        return fd

    def append(self, line: bytes) -> None:
        """Add one record; it is on disk when this returns."""
        fd = self._open(os.O_RDWR | os.O_APPEND)
        try:
            size = os.fstat(fd).st_size
            # A gateway killed mid-write leaves a line without its end: close it off, so
            # the torn line is skipped on replay instead of swallowing this one.
            if size and os.pread(fd, 1, size - 1) != b"\n":
                line = b"\n" + line
            os.write(fd, line)
            os.fsync(fd)
        finally:
            os.close(fd)

    def pending(self) -> bool:
        try:
            return self.path.stat().st_size > 0
        except FileNotFoundError:
            return False

    def replay(self, store: Store) -> int:
        """Offer every spooled record to the store; empty the spool once all are in.

        Raises what the store raises; the spool is then left as it was, and records that
        went in before the failure are skipped the next time.
        """
        if not self.pending():
            return 0
        fd = self._open(os.O_RDWR)
        try:
            with os.fdopen(os.dup(fd), "rb") as spooled:
                lines = spooled.read().splitlines()
            entries: list[dict[str, Any]] = []
            for number, line in enumerate(lines, 1):
                try:
                    entries.append(json.loads(line))
                except ValueError:
                    if line.strip():
                        log.warning("usage spool %s line %d is torn (the gateway was killed"
                                    " while writing it); skipped", self.path, number)
            added = 0
            for start in range(0, len(entries), _BATCH):
                added += self._commit(store, entries[start:start + _BATCH])
            os.ftruncate(fd, 0)
            os.fsync(fd)
        finally:
            os.close(fd)
        if entries:
            log.warning("usage spool: %d of %d records committed to the store (the rest"
                        " were already there or set aside)", added, len(entries))
        return added

    def _commit(self, store: Store, entries: list[dict[str, Any]]) -> int:
        try:
            return store.run_sync(replay_op(entries))
        except Exception:
            if not _answers(store):
                raise  # the store is still away: the spool waits for the next try
        # The store answers, so a record of this batch cannot go in: one such record must
        # not hold back the rest forever. Each goes alone; one that fails is kept apart.
        added = 0
        for entry in entries:
            try:
                added += store.run_sync(replay_op([entry]))
            except Exception as exc:
                log.error("usage spool: a record the store refuses is kept in %s: %s",
                          self.rejected, exc)
                self._keep_apart(entry)
        return added

    def _keep_apart(self, entry: dict[str, Any]) -> None:
        fd = os.open(self.rejected, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, json.dumps(entry, separators=(",", ":")).encode() + b"\n")
            os.fsync(fd)
        finally:
            os.close(fd)


def _answers(store: Store) -> bool:
    try:
        store.run_sync(lambda conn: conn.execute(select(1)))
    except Exception:
        return False
    return True
