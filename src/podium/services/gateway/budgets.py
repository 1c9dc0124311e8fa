"""Budgets in money per key and team: the worst case a request may cost, the team's rates, and
what admission must take for them, counted in millionths of the prices' currency."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection, select

from podium.services.gateway.config import Price
from podium.services.gateway.keys import ApiKey
from podium.services.gateway.limits import Ask, Refusal, minute_window, period_window
from podium.services.gateway.tables import counters_table, keys_table, teams_table

MICRO = 1_000_000
# Counter kinds of a budget's window, by its period.
KINDS = {"day": "$day", "month": "$month"}


def worst_cost(price: Price, body_bytes: int, tokens: int) -> int:
    """The most a request reserving `tokens` can cost, in millionths: its body's bytes bound its
    prompt tokens, the rest of the reservation is completion.

    Example: worst_cost(Price(prompt_per_1k=1, completion_per_1k=2), 100, 108) == 116
    """
    prompt = min(body_bytes, tokens)
    money = (prompt * price.prompt_per_1k + (tokens - prompt) * price.completion_per_1k) / 1000
    return math.ceil(money * MICRO)


def in_micro(money: float) -> int:
    return round(money * MICRO)


def team_and_budget_asks(key: ApiKey, now: float, tokens: int, cost: int) -> list[Ask]:
    """What a request takes, beyond its key's token and request limits: the key's budget, and
    its team's tokens, requests and budget."""
    asks: list[Ask] = []
    minute = minute_window(now)
    next_minute = int(minute + 60 - now) + 1

    def budget(owner: int, who: str, money: float | None, period: str | None) -> None:
        if money is None or period is None:
            return
        start, end = period_window(now, period)
        asks.append(Ask(owner, KINDS[period], start, cost, in_micro(money), Refusal(
            "budget_exceeded",
            f"{who} spent its budget of {money:g} per {period}; it renews at"
            f" {datetime.fromtimestamp(end, UTC):%Y-%m-%d %H:%M} UTC",
            int(end - now) + 1,
        )))

    budget(key.id, f"key {key.name!r}", key.budget, key.budget_period)
    team = key.team_limits
    if team is None:
        return asks
    who = f"team {team.name!r}"
    if team.tpm is not None:
        asks.append(Ask(team.owner, "tpm", minute, tokens, team.tpm, Refusal(
            "tokens_per_minute",
            f"{who} used its {team.tpm} tokens per minute; retry in {next_minute} s",
            next_minute)))
    budget(team.owner, who, team.budget, team.budget_period)
    if team.rpm is not None:
        asks.append(Ask(team.owner, "rpm", minute, 1, team.rpm, Refusal(
            "requests_per_minute",
            f"{who} made its {team.rpm} requests this minute; retry in {next_minute} s",
            next_minute)))
    return asks


@dataclass(frozen=True)
class Spend:
    """A key's or team's spend in the current budget window, against its budget."""

    kind: str  # key or team
    name: str
    period: str
    budget: float
    spent: float

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "name": self.name, "period": self.period,
                "budget": self.budget, "spent": self.spent}


def spend_op(now: float) -> Callable[[Connection], list[Spend]]:
    """Every budget with what admission counts against it now (settled spend plus what
    requests in flight reserved)."""

    def op(conn: Connection) -> list[Spend]:
        found = []
        owners: list[tuple[str, int, str, float, str]] = []
        k, t = keys_table.c, teams_table.c
        for row in conn.execute(select(k.id, k.name, k.budget, k.budget_period)
                                .where(k.budget.is_not(None), k.revoked_at.is_(None))):
            owners.append(("key", row.id, row.name, row.budget, row.budget_period))
        for row in conn.execute(select(t.id, t.name, t.budget, t.budget_period)
                                .where(t.budget.is_not(None))):
            owners.append(("team", -row.id, row.name, row.budget, row.budget_period))
        c = counters_table.c
        for kind, owner, name, money, period in sorted(owners, key=lambda o: (o[0], o[2])):
            start, _ = period_window(now, period)
            value = conn.execute(select(c.value).where(
                c.key_id == owner, c.kind == KINDS[period], c.window == start)).scalar()
            found.append(Spend(kind, name, period, money, round((value or 0) / MICRO, 6)))
        return found

    return op
