"""Requests-per-minute, tokens-per-minute and token quotas, counted in the shared store.

Each limit is a fixed-window counter row (key, kind, window start) changed by atomic
UPSERTs, so every gateway on the same store sees and enforces the same numbers.
"""

from __future__ import annotations

import calendar
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import Connection, and_, delete, or_, select

from podium.services.gateway.config import Limits, parse_quota
from podium.services.gateway.keys import ApiKey
from podium.services.gateway.store import counters_table, upsert


@dataclass(frozen=True)
class EffectiveLimits:
    """A key's limits after the gateway's defaults fill in what the key leaves unset."""

    rpm: int | None
    tpm: int | None
    quota: int | None
    quota_period: str | None

    @classmethod
    def of(cls, key: ApiKey, defaults: Limits) -> EffectiveLimits:
        quota, period = key.quota, key.quota_period
        if quota is None and defaults.quota is not None:
            quota, period = parse_quota(defaults.quota)
        return cls(
            rpm=key.rpm if key.rpm is not None else defaults.rpm,
            tpm=key.tpm if key.tpm is not None else defaults.tpm,
            quota=quota,
            quota_period=period,
        )

    def counts_tokens(self) -> bool:
        return self.tpm is not None or self.quota is not None


@dataclass(frozen=True)
class Refusal:
    """Why a request is refused with 429, and when to come back."""

    code: str
    message: str
    retry_after_s: int


def minute_window(now: float) -> int:
    return int(now // 60) * 60


def period_window(now: float, period: str) -> tuple[int, int]:
    """Start and end (epoch seconds, UTC) of the day or month containing `now`."""
    moment = datetime.fromtimestamp(now, UTC)
    if period == "day":
        start = calendar.timegm((moment.year, moment.month, moment.day, 0, 0, 0))
        return start, start + 86400
    start = calendar.timegm((moment.year, moment.month, 1, 0, 0, 0))
    year, month = (moment.year + 1, 1) if moment.month == 12 else (moment.year, moment.month + 1)
    return start, calendar.timegm((year, month, 1, 0, 0, 0))


def _value(conn: Connection, key_id: int, kind: str, window: int) -> int:
    found = conn.execute(
        select(counters_table.c.value).where(
            counters_table.c.key_id == key_id,
            counters_table.c.kind == kind,
            counters_table.c.window == window,
        )
    ).scalar()
    return int(found or 0)


def admit_op(
    key: ApiKey, limits: EffectiveLimits, now: float
) -> Callable[[Connection], Refusal | None]:
    """Check TPM and quota, then count the request against RPM if it is under it."""
    minute = minute_window(now)
    next_minute = int(minute + 60 - now) + 1

    def op(conn: Connection) -> Refusal | None:
        if limits.tpm is not None and _value(conn, key.id, "tpm", minute) >= limits.tpm:
            return Refusal(
                "tokens_per_minute",
                f"key {key.name!r} used its {limits.tpm} tokens per minute; retry in"
                f" {next_minute} s",
                next_minute,
            )
        if limits.quota is not None and limits.quota_period is not None:
            start, end = period_window(now, limits.quota_period)
            if _value(conn, key.id, limits.quota_period, start) >= limits.quota:
                return Refusal(
                    "insufficient_quota",
                    f"key {key.name!r} used its quota of {limits.quota} tokens per"
                    f" {limits.quota_period}; it renews at"
                    f" {datetime.fromtimestamp(end, UTC):%Y-%m-%d %H:%M} UTC",
                    int(end - now) + 1,
                )
        if limits.rpm is None:
            return None
        refused = Refusal(
            "requests_per_minute",
            f"key {key.name!r} made its {limits.rpm} requests this minute; retry in"
            f" {next_minute} s",
            next_minute,
        )
        if limits.rpm == 0:
            return refused
        # Increment only while under the limit: a refused request does not use up the window.
        first = {"key_id": key.id, "kind": "rpm", "window": minute, "value": 1}
        stmt = upsert(conn, counters_table, first)
        stmt = stmt.on_conflict_do_update(
            index_elements=["key_id", "kind", "window"],
            set_={"value": counters_table.c.value + 1},
            where=counters_table.c.value < limits.rpm,
        ).returning(counters_table.c.value)
        return None if conn.execute(stmt).first() is not None else refused

    return op


def charge(conn: Connection, key_id: int, limits: EffectiveLimits, tokens: int, now: float) -> None:
    """Add a finished request's tokens to its key's TPM and quota windows."""
    if tokens <= 0:
        return
    windows: list[tuple[str, int]] = []
    if limits.tpm is not None:
        windows.append(("tpm", minute_window(now)))
    if limits.quota is not None and limits.quota_period is not None:
        windows.append((limits.quota_period, period_window(now, limits.quota_period)[0]))
    for kind, window in windows:
        first = {"key_id": key_id, "kind": kind, "window": window, "value": tokens}
        stmt = upsert(conn, counters_table, first)
        conn.execute(
            stmt.on_conflict_do_update(
                index_elements=["key_id", "kind", "window"],
                set_={"value": counters_table.c.value + tokens},
            )
        )


def cleanup_op(now: float | None = None) -> Callable[[Connection], int]:
    """Delete counter windows that can no longer matter."""
    now = time.time() if now is None else now

    def op(conn: Connection) -> int:
        c = counters_table.c
        result = conn.execute(
            delete(counters_table).where(
                or_(
                    and_(c.kind.in_(("rpm", "tpm")), c.window < now - 3600),
                    and_(c.kind == "day", c.window < now - 3 * 86400),
                    and_(c.kind == "month", c.window < now - 64 * 86400),
                )
            )
        )
        return int(result.rowcount or 0)

    return op
