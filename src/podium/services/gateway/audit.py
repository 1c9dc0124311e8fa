"""The audit log: admin actions, each entry chained to the one before by its sha256."""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from sqlalchemy import Connection, select, text

from podium.errors import InvalidInput
from podium.services.gateway.keys import KEY_PREFIX
from podium.services.gateway.tables import audit_table

GENESIS = "0" * 64
# Actions the control machine reports about itself (the gateway writes the key and team
# actions as it does them, so those cannot be reported from outside).
REPORTED = ("stack.up", "stack.rollback", "model.push", "model.tag", "model.rm")
# Any constant: PostgreSQL's transaction-scoped lock that serialises appends, so two
# gateways never chain two entries to the same predecessor.
_APPEND_LOCK = 0x706F6469756D


@dataclass(frozen=True)
class AuditEntry:
    """One admin action: when, who (admin token or OS user), what, on what, and its hashes."""

    seq: int
    ts: float
    actor: str
    action: str
    target: str
    detail: dict[str, Any]
    prev_hash: str
    hash: str

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def entry_hash(prev_hash: str, seq: int, ts: float, actor: str, action: str, target: str,
               detail: str) -> str:
    """sha256 over the previous entry's hash and every field of this one."""
    payload = json.dumps([prev_hash, seq, f"{ts:.3f}", actor, action, target, detail])
    return hashlib.sha256(payload.encode()).hexdigest()


def _holds_secret(value: Any) -> bool:
    if isinstance(value, str):
        return value.startswith(KEY_PREFIX) and len(value) > 20
    if isinstance(value, dict):
        return any(_holds_secret(v) for v in value.values())
    if isinstance(value, list | tuple):
        return any(_holds_secret(v) for v in value)
    return False


def append(conn: Connection, actor: str, action: str, target: str,
           detail: dict[str, Any] | None = None) -> AuditEntry:
    """Append an entry in the caller's transaction, so it commits with the action or not at all."""
    detail = detail or {}
    if _holds_secret(detail):
        raise InvalidInput(f"audit detail for {action} {target!r} holds a key secret; it is never logged")
    if conn.dialect.name == "postgresql":
        conn.execute(text("SELECT pg_advisory_xact_lock(:lock)"), {"lock": _APPEND_LOCK})
    c = audit_table.c
    last = conn.execute(select(c.seq, c.hash).order_by(c.seq.desc()).limit(1)).first()
    seq = 1 if last is None else int(last.seq) + 1
    prev = GENESIS if last is None else str(last.hash)
    ts = round(time.time(), 3)
    body = json.dumps(detail, sort_keys=True)
    digest = entry_hash(prev, seq, ts, actor, action, target, body)
    conn.execute(audit_table.insert().values(
        seq=seq, ts=ts, actor=actor, action=action, target=target, detail=body,
        prev_hash=prev, hash=digest))
    return AuditEntry(seq, ts, actor, action, target, detail, prev, digest)


def update_action(changes: dict[str, Any]) -> str:
    """key.disable or key.enable when that is all a key update does, else key.update."""
    if set(changes) == {"disabled"}:
        return "key.disable" if changes["disabled"] else "key.enable"
    return "key.update"


def audited(op: Callable[[Connection], Any], actor: str, action: str,
            target: str, detail: dict[str, Any] | None = None) -> Callable[[Connection], Any]:
    """`op`, then its audit entry, in one transaction."""

    def run(conn: Connection) -> Any:
        result = op(conn)
        append(conn, actor, action, target, detail)
        return result

    return run


def report_op(actor: str, action: str, target: str,
              detail: dict[str, Any]) -> Callable[[Connection], AuditEntry]:
    """An action the control machine did (podium up, a rollback, a model change)."""
    if action not in REPORTED:
        raise InvalidInput(f"audit action {action!r} cannot be reported; reported actions are"
                           f" {', '.join(REPORTED)}")
    return lambda conn: append(conn, actor, action, target, detail)


def _entry(row: Any) -> AuditEntry:
    try:
        detail = json.loads(row.detail)
    except ValueError:
        detail = {"unreadable": row.detail}
    return AuditEntry(int(row.seq), float(row.ts), row.actor, row.action, row.target,
                      detail if isinstance(detail, dict) else {"value": detail},
                      row.prev_hash, row.hash)


def entries_op(since: float | None = None) -> Callable[[Connection], list[AuditEntry]]:
    def op(conn: Connection) -> list[AuditEntry]:
        query = select(audit_table).order_by(audit_table.c.seq)
        if since is not None:
            query = query.where(audit_table.c.ts >= since)
        return [_entry(row) for row in conn.execute(query)]

    return op


@dataclass(frozen=True)
class ChainCheck:
    """Whether the chain holds; if not, the position (seq) of the first entry that breaks it."""

    entries: int
    broken_at: int | None = None
    reason: str = ""

    @property
    def holds(self) -> bool:
        return self.broken_at is None

    def to_json(self) -> dict[str, Any]:
        return {"holds": self.holds, **asdict(self)}


def verify_op() -> Callable[[Connection], ChainCheck]:
    """Recompute every hash in order: an edited entry breaks its own hash, a deleted or
    inserted one breaks the sequence or the link of the entry after it."""

    def op(conn: Connection) -> ChainCheck:
        prev, expected, count = GENESIS, 1, 0
        for row in conn.execute(select(audit_table).order_by(audit_table.c.seq)):
            count += 1
            seq = int(row.seq)
            if seq != expected:
                return ChainCheck(count, expected, f"entry {expected} is missing")
            if row.prev_hash != prev:
                return ChainCheck(count, seq, "its link to the entry before does not match")
            if entry_hash(prev, seq, float(row.ts), row.actor, row.action, row.target,
                          row.detail) != row.hash:
                return ChainCheck(count, seq, "its content does not match its hash")
            prev, expected = row.hash, seq + 1
        return ChainCheck(count)

    return op
