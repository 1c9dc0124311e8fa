"""Requests-per-minute, tokens-per-minute, token quotas and requests in flight, in the store.

Each rate limit is a fixed-window counter row (key, kind, window start) changed by atomic
UPSERTs, and each request in flight a row until its record settles it, so every gateway on
the same store sees and enforces the same numbers.
"""

from __future__ import annotations

import calendar
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import Connection, and_, bindparam, delete, func, or_, select

from podium.services.gateway.config import Limits, parse_quota
from podium.services.gateway.keys import ApiKey
from podium.services.gateway.reservation import COUNTER_ROW, Reservation, add
from podium.services.gateway.statements import Prepared
from podium.services.gateway.tables import counters_table, in_flight_table, keys_table, upsert


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

    def admits(self, key: ApiKey) -> bool:
        """Whether admission has anything to count for this key (else it costs no store call)."""
        team = key.team_limits
        return (self.rpm is not None or self.counts_tokens() or key.max_in_flight is not None
                or key.budget is not None or (team is not None and team.limited()))


@dataclass(frozen=True)
class Refusal:
    """Why a request is refused with 429, and when to come back."""

    code: str
    message: str
    retry_after_s: int


@dataclass(frozen=True)
class Ask:
    """A counter admission adds to while it is under its limit, or refuses with `refusal`."""

    owner: int  # a key's id, or minus a team's id
    kind: str
    window: int
    amount: int
    limit: int
    refusal: Refusal


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


# Add to a window only while it is under the limit; returns the row only when it did.
_TAKE = Prepared(lambda conn: upsert(conn, counters_table, COUNTER_ROW).on_conflict_do_update(
    index_elements=["key_id", "kind", "window"],
    set_={"value": counters_table.c.value + bindparam("amount")},
    where=counters_table.c.value < bindparam("limit"),
).returning(counters_table.c.value))


def _take(conn: Connection, key_id: int, kind: str, window: int, amount: int,
          limit: int) -> bool:
    """Add `amount` to a window only while it is under `limit`; False when it is not."""
    if limit <= 0:
        return False
    cursor = _TAKE.execute(conn, {"key_id": key_id, "kind": kind, "window": window,
                                  "amount": amount, "limit": limit})
    taken = cursor.fetchone() is not None
    cursor.close()
    return taken


def _requests_in_flight(conn: Connection, key: ApiKey, now: float) -> int:
    c = in_flight_table.c
    # Serialise admissions of this key across gateways (PostgreSQL; SQLite's write lock
    # already does), so two cannot both count one free slot.
    conn.execute(select(keys_table.c.id).where(keys_table.c.id == key.id).with_for_update())
    conn.execute(delete(in_flight_table).where(c.key_id == key.id, c.until < now))
    found = conn.execute(select(func.count()).select_from(in_flight_table)
                         .where(c.key_id == key.id)).scalar()
    return int(found or 0)


def admit_op(
    key: ApiKey, limits: EffectiveLimits, now: float, request_id: str = "",
    tokens: int = 0, hold_s: float = 3600.0, extra: Sequence[Ask] = (), cost: int = 0,
) -> Callable[[Connection], Refusal | Reservation]:
    """Reserve `tokens` in the key's TPM and quota windows, count the request against RPM
    and its requests in flight, and take the `extra` asks (budgets, the team's limits; `cost`
    is what their budgets reserve), all or nothing; a refused request takes nothing.

    A window takes a reservation while it is under its limit, so concurrent requests push
    it past the limit by at most one reservation. `hold_s` bounds how long a request may
    hold an in-flight slot if its gateway dies before recording it.
    """
    minute = minute_window(now)
    next_minute = int(minute + 60 - now) + 1
    asks: list[Ask] = []
    if limits.tpm is not None:
        asks.append(Ask(key.id, "tpm", minute, tokens, limits.tpm, Refusal(
            "tokens_per_minute",
            f"key {key.name!r} used its {limits.tpm} tokens per minute; retry in"
            f" {next_minute} s",
            next_minute,
        )))
    if limits.quota is not None and limits.quota_period is not None:
        start, end = period_window(now, limits.quota_period)
        asks.append(Ask(key.id, limits.quota_period, start, tokens, limits.quota, Refusal(
            "insufficient_quota",
            f"key {key.name!r} used its quota of {limits.quota} tokens per"
            f" {limits.quota_period}; it renews at"
            f" {datetime.fromtimestamp(end, UTC):%Y-%m-%d %H:%M} UTC",
            int(end - now) + 1,
        )))
    if limits.rpm is not None:
        asks.append(Ask(key.id, "rpm", minute, 1, limits.rpm, Refusal(
            "requests_per_minute",
            f"key {key.name!r} made its {limits.rpm} requests this minute; retry in"
            f" {next_minute} s",
            next_minute,
        )))

    def op(conn: Connection) -> Refusal | Reservation:
        if key.max_in_flight is not None and (
            _requests_in_flight(conn, key, now) >= key.max_in_flight
        ):
            return Refusal(
                "requests_in_flight",
                f"key {key.name!r} already has its {key.max_in_flight} requests in flight;"
                " retry when one has finished",
                1,
            )
        taken: list[Ask] = []
        for ask in (*asks, *extra):
            if not _take(conn, ask.owner, ask.kind, ask.window, ask.amount, ask.limit):
                # Give back what this request took from the windows checked before, in
                # the same transaction, so nobody ever sees it counted.
                for done in taken:
                    add(conn, done.owner, done.kind, done.window, -done.amount)
                return ask.refusal
            taken.append(ask)
        if key.max_in_flight is not None:
            conn.execute(in_flight_table.insert().values(
                request_id=request_id, key_id=key.id, until=now + hold_s))
        return Reservation(
            tokens=tokens,
            windows=tuple((a.kind, a.window) for a in taken[:len(asks)] if a.kind != "rpm"),
            rpm_window=minute if limits.rpm is not None else None,
            in_flight=key.max_in_flight is not None,
            cost=cost,
            held=tuple((a.owner, a.kind, a.window) for a in taken[len(asks):]),
        )

    return op


def cleanup_op(now: float | None = None) -> Callable[[Connection], int]:
    """Delete counter windows that can no longer matter, and in-flight rows past their hold."""
    now = time.time() if now is None else now

    def op(conn: Connection) -> int:
        c = counters_table.c
        result = conn.execute(
            delete(counters_table).where(
                or_(
                    and_(c.kind.in_(("rpm", "tpm")), c.window < now - 3600),
                    and_(c.kind.in_(("day", "$day")), c.window < now - 3 * 86400),
                    and_(c.kind.in_(("month", "$month")), c.window < now - 64 * 86400),
                )
            )
        )
        conn.execute(delete(in_flight_table).where(in_flight_table.c.until < now))
        return int(result.rowcount or 0)

    return op
