"""Teams: groups of keys whose models, rates and budget every key in them must also pass."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, delete, select, update

from podium.errors import InvalidInput
from podium.services.gateway.keys import NAME, parse_budget
from podium.services.gateway.tables import keys_table, teams_table

TEAM_SETTINGS = ("models", "rpm", "tpm", "budget")


@dataclass(frozen=True)
class Team:
    """A team as stored; its counters are kept under minus its id."""

    id: int
    name: str
    models: tuple[str, ...]
    rpm: int | None
    tpm: int | None
    budget: float | None
    budget_period: str | None

    @property
    def owner(self) -> int:
        return -self.id

    def allows(self, model: str) -> bool:
        return "*" in self.models or model in self.models

    def limited(self) -> bool:
        return self.rpm is not None or self.tpm is not None or self.budget is not None

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "models": list(self.models), "rpm": self.rpm,
                "tpm": self.tpm, "budget": self.budget, "budget_period": self.budget_period}


def team_columns(name: str, data: Any) -> dict[str, Any]:
    """A team's settings (as the admin API and the stack give them) as stored columns."""
    if not isinstance(data, dict):
        raise InvalidInput(f"team {name!r} must be a JSON object of {', '.join(TEAM_SETTINGS)}")
    if not NAME.match(name):
        raise InvalidInput(f"team name {name!r} is not valid; use 1-64 letters, digits, '.', '_' or '-'")
    unknown = set(data) - set(TEAM_SETTINGS)
    if unknown:
        raise InvalidInput(f"team {name!r} has unknown fields {sorted(unknown)}; known: "
                           f"{', '.join(TEAM_SETTINGS)}")
    models = data.get("models") or ["*"]
    if isinstance(models, str):
        models = [m.strip() for m in models.split(",")]
    columns: dict[str, Any] = {"name": name, "models": ",".join(str(m) for m in models)}
    for field in ("rpm", "tpm"):
        value = data.get(field)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)
                                  or value < 0):
            raise InvalidInput(f"team {name!r} {field} {value!r} must be a whole number, 0 or more")
        columns[field] = value
    budget = data.get("budget")
    money, period = parse_budget(str(budget)) if budget is not None else (None, None)
    columns.update(budget=money, budget_period=period)
    return columns


def _team(row: Any) -> Team:
    return Team(row.id, row.name, tuple(row.models.split(",")), row.rpm, row.tpm, row.budget,
                row.budget_period)


def find(conn: Connection, name: str) -> Team | None:
    row = conn.execute(select(teams_table).where(teams_table.c.name == name)).first()
    return None if row is None else _team(row)


def require(conn: Connection, name: str) -> None:
    """Refuse a key's team that does not exist."""
    if find(conn, name) is None:
        raise InvalidInput(f"no team named {name!r}; declare it in the stack's gateway.teams")


def list_op() -> Callable[[Connection], list[Team]]:
    def op(conn: Connection) -> list[Team]:
        return [_team(r) for r in conn.execute(select(teams_table).order_by(teams_table.c.name))]

    return op


def put_op(name: str, data: Any) -> Callable[[Connection], tuple[Team, bool]]:
    """Create or replace a team; (the team, whether it is new)."""
    columns = team_columns(name, data)

    def op(conn: Connection) -> tuple[Team, bool]:
        existing = find(conn, name)
        if existing is None:
            conn.execute(teams_table.insert().values(**columns))
        else:
            conn.execute(update(teams_table).where(teams_table.c.id == existing.id)
                         .values(**columns))
        team = find(conn, name)
        assert team is not None
        return team, existing is None

    return op


def remove_op(name: str) -> Callable[[Connection], Team]:
    """Remove a team no active key belongs to any more."""

    def op(conn: Connection) -> Team:
        team = find(conn, name)
        if team is None:
            raise InvalidInput(f"no team named {name!r}; the gateway's teams are its stack's")
        k = keys_table.c
        members = conn.execute(select(k.name).where(k.team == name, k.revoked_at.is_(None))
                               .order_by(k.name)).scalars().all()
        if members:
            raise InvalidInput(f"team {name!r} still has keys {', '.join(members)};"
                               " move them to another team or revoke them first")
        conn.execute(delete(teams_table).where(teams_table.c.id == team.id))
        return team

    return op
