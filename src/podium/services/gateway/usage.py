"""Usage reports over raw records and daily roll-ups, and the roll-up itself."""

from __future__ import annotations

import csv
import io
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection, case, delete, func, select

from podium.errors import InvalidInput
from podium.services.gateway.tables import keys_table, upsert, usage_daily_table, usage_table

GROUPINGS = ("key", "model", "day", "team")
_BATCH = 5000


@dataclass
class UsageLine:
    """One row of a usage report: a group (key, model and/or day) and its totals."""

    key: str
    model: str
    day: str
    requests: int
    errors: int
    prompt_tokens: int
    completion_tokens: int
    cost: float
    # The key's team now ('' when not grouped by team, '-' for keys in none).
    team: str = ""


def _day(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d")


def rollup_op(retention_days: int, now: float | None = None) -> Callable[[Connection], int]:
    """Move up to 5,000 records older than the retention into per-day, key, model totals.

    Rows are deleted with RETURNING, so two gateways rolling up at once never count a
    record twice: the second one's DELETE finds the rows gone.
    """
    cutoff = (time.time() if now is None else now) - retention_days * 86400

    def op(conn: Connection) -> int:
        u = usage_table.c
        ids = select(u.id).where(u.ts < cutoff).order_by(u.id).limit(_BATCH)
        gone = conn.execute(
            delete(usage_table)
            .where(u.id.in_(ids.scalar_subquery()))
            .returning(u.ts, u.key_name, u.model, u.status, u.prompt_tokens,
                       u.completion_tokens, u.cost)
        ).all()
        totals: dict[tuple[str, str, str], list[float]] = defaultdict(lambda: [0, 0, 0, 0, 0.0])
        for row in gone:
            t = totals[(_day(row.ts), row.key_name, row.model)]
            t[0] += 1
            t[1] += 1 if row.status >= 400 else 0
            t[2] += row.prompt_tokens
            t[3] += row.completion_tokens
            t[4] += row.cost
        d = usage_daily_table.c
        for (day, key, model), (n, errs, prompt, completion, cost) in totals.items():
            stmt = upsert(conn, usage_daily_table, {
                "day": day, "key_name": key, "model": model, "requests": n, "errors": errs,
                "prompt_tokens": prompt, "completion_tokens": completion, "cost": cost,
            })
            conn.execute(stmt.on_conflict_do_update(
                index_elements=["day", "key_name", "model"],
                set_={
                    "requests": d.requests + n,
                    "errors": d.errors + errs,
                    "prompt_tokens": d.prompt_tokens + prompt,
                    "completion_tokens": d.completion_tokens + completion,
                    "cost": d.cost + cost,
                },
            ))
        return len(gone)

    return op


def report_op(
    since: float | None, until: float | None, by: Sequence[str]
) -> Callable[[Connection], list[UsageLine]]:
    """Totals per group over raw records in [since, until) and roll-ups of days in it.

    Example: store.run_sync(report_op(None, None, ["key"])) -> one UsageLine per key
    """
    for name in by:
        if name not in GROUPINGS:
            raise InvalidInput(
                f"--by {name!r} is not a grouping; use one of {', '.join(GROUPINGS)}"
            )

    def op(conn: Connection) -> list[UsageLine]:
        u = usage_table.c
        totals: dict[tuple[str, str, str, str], list[float]] = defaultdict(
            lambda: [0, 0, 0, 0, 0.0])
        teams: dict[str, str] = {}
        if "team" in by:
            k = keys_table.c
            teams = {r.name: r.team or "-" for r in conn.execute(select(k.name, k.team))}

        def group(key: str, model: str, day: str) -> tuple[str, str, str, str]:
            return (
                key if "key" in by else "",
                model if "model" in by else "",
                day if "day" in by else "",
                teams.get(key, "-") if "team" in by else "",
            )

        # Raw rows are summed in SQL per key, model and UTC day; groups are merged here.
        # One expression object for the column and its GROUP BY: built twice, PostgreSQL gets
        # two bind parameters and refuses ts as neither grouped nor aggregated.
        epoch_day = func.floor(u.ts / 86400).label("epoch_day")
        grouped = select(
            u.key_name,
            u.model,
            epoch_day,
            func.count().label("n"),
            func.sum(case((u.status >= 400, 1), else_=0)).label("errs"),
            func.sum(u.prompt_tokens).label("prompt"),
            func.sum(u.completion_tokens).label("completion"),
            func.sum(u.cost).label("cost"),
        )
        if since is not None:
            grouped = grouped.where(u.ts >= since)
        if until is not None:
            grouped = grouped.where(u.ts < until)
        grouped = grouped.group_by(u.key_name, u.model, epoch_day)
        for row in conn.execute(grouped):
            t = totals[group(row.key_name, row.model, _day(float(row.epoch_day) * 86400))]
            t[0] += row.n
            t[1] += row.errs or 0
            t[2] += row.prompt or 0
            t[3] += row.completion or 0
            t[4] += row.cost or 0.0
        d = usage_daily_table.c
        daily = select(usage_daily_table)
        if since is not None:
            daily = daily.where(d.day >= _day(since))
        if until is not None:
            daily = daily.where(d.day < _day(until))
        for row in conn.execute(daily):
            t = totals[group(row.key_name, row.model, row.day)]
            t[0] += row.requests
            t[1] += row.errors
            t[2] += row.prompt_tokens
            t[3] += row.completion_tokens
            t[4] += row.cost
        return [
            UsageLine(k, m, day, int(t[0]), int(t[1]), int(t[2]), int(t[3]), round(t[4], 6),
                      team=team)
            for (k, m, day, team), t in sorted(totals.items())
        ]

    return op


def records_op(
    since: float | None, until: float | None
) -> Callable[[Connection], list[dict[str, Any]]]:
    """The raw per-request records in [since, until), oldest first."""

    def op(conn: Connection) -> list[dict[str, Any]]:
        u = usage_table.c
        query = select(usage_table).order_by(u.id)
        if since is not None:
            query = query.where(u.ts >= since)
        if until is not None:
            query = query.where(u.ts < until)
        return [dict(row._mapping) for row in conn.execute(query)]

    return op


def to_csv(lines: Sequence[UsageLine], by: Sequence[str]) -> str:
    out = io.StringIO()
    columns = [c for c in ("team", "key", "model", "day") if c in by] + [
        "requests", "errors", "prompt_tokens", "completion_tokens", "cost",
    ]
    writer = csv.DictWriter(out, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for line in lines:
        writer.writerow(asdict(line))
    return out.getvalue()
