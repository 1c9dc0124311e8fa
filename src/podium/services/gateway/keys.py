"""API keys: how they are made, stored (hashed), looked up, cached, changed, rotated and revoked."""

from __future__ import annotations

import hashlib
import re
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from datetime import UTC, date, datetime, timedelta
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection, select, update
from sqlalchemy.exc import IntegrityError

from podium.errors import InvalidInput
from podium.services.gateway.config import parse_quota
from podium.services.gateway.tables import keys_table

if TYPE_CHECKING:
    from podium.services.gateway.teams import Team

KEY_PREFIX = "pdm-"
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


def new_secret() -> str:
    """A fresh API key: 'pdm-' and 256 random bits, shown once and never stored."""
    return KEY_PREFIX + secrets.token_urlsafe(32)


def hash_secret(secret: str) -> str:
    # A plain sha256 is enough here: keys carry 256 random bits, so no dictionary or
    # brute-force search can invert the hash. Slow password hashes (bcrypt, argon2) exist
    # for low-entropy human passwords and would add milliseconds to every request.
    return hashlib.sha256(secret.encode()).hexdigest()


@dataclass(frozen=True)
class ApiKey:
    """One API key as stored: its limits (None: the gateway's default) and its state."""

    id: int
    name: str
    prefix: str
    models: tuple[str, ...]
    rpm: int | None
    tpm: int | None
    quota: int | None
    quota_period: str | None
    expires_at: float | None
    created_at: float
    revoked_at: float | None
    # Requests this key may have in flight at once, over every gateway (None: no bound).
    max_in_flight: int | None = None
    disabled_at: float | None = None
    # Until when the secret a rotation replaced is still accepted (None: no such secret).
    previous_until: float | None = None
    team: str | None = None
    budget: float | None = None
    budget_period: str | None = None
    # Found by the secret a rotation replaced, which works only until previous_until.
    by_previous: bool = False
    # The key's team as it was looked up with the key (cached with it, for admission).
    team_limits: Team | None = None

    def allows(self, model: str) -> bool:
        mine = "*" in self.models or model in self.models
        return mine and (self.team_limits is None or self.team_limits.allows(model))

    def state(self, now: float) -> str:
        if self.revoked_at is not None:
            return "revoked"
        if self.disabled_at is not None:
            return "disabled"
        if self.expires_at is not None and now >= self.expires_at:
            return "expired"
        if self.by_previous and (self.previous_until is None or now >= self.previous_until):
            return "rotated"
        return "active"

    def settings(self) -> dict[str, Any]:
        """What can be changed on the key, in the form KeySpec.from_json reads."""
        return {
            "models": list(self.models), "rpm": self.rpm, "tpm": self.tpm,
            "quota": None if self.quota is None else f"{self.quota}/{self.quota_period}",
            "expires_at": self.expires_at, "max_in_flight": self.max_in_flight,
            "team": self.team,
            "budget": None if self.budget is None else budget_text(self.budget, self.budget_period),
        }

    def to_json(self, now: float | None = None) -> dict[str, Any]:
        data = asdict(self)
        del data["by_previous"], data["team_limits"]
        data["models"] = list(self.models)
        data["state"] = self.state(time.time() if now is None else now)
        return data


@dataclass(frozen=True)
class KeySpec:
    """What `podium keys create` asks for.

    Example: KeySpec(name="ci", models=("tiny",), rpm=60, quota="100000/day")
    """

    name: str
    models: tuple[str, ...] = ("*",)
    rpm: int | None = None
    tpm: int | None = None
    quota: str | None = None
    expires_at: float | None = None
    max_in_flight: int | None = None
    team: str | None = None
    # Spend per day or month in the prices' currency, e.g. "5/month".
    budget: str | None = None

    def validate(self) -> None:
        if not NAME.match(self.name):
            raise InvalidInput(
                f"key name {self.name!r} is not valid; use 1-64 letters, digits, '.', '_' or '-'"
            )
        if not self.models or any(not m.strip() for m in self.models):
            raise InvalidInput("key models must list model names (m1,m2) or '*' for all models")
        for field, value in (("rpm", self.rpm), ("tpm", self.tpm)):
            if value is not None and value < 0:
                raise InvalidInput(f"key {field} {value} must be 0 or more")
        if self.max_in_flight is not None and self.max_in_flight < 1:
            raise InvalidInput(
                f"key max_in_flight {self.max_in_flight} must be 1 or more (or unset: no bound)"
            )
        if self.quota is not None:
            parse_quota(self.quota)
        if self.budget is not None:
            parse_budget(self.budget)
        if self.team is not None and not NAME.match(self.team):
            raise InvalidInput(
                f"team name {self.team!r} is not valid; use 1-64 letters, digits, '.', '_' or '-'"
            )

    @classmethod
    def from_json(cls, data: Any) -> KeySpec:
        if not isinstance(data, dict):
            raise InvalidInput("key request body must be a JSON object with at least 'name'")
        unknown = set(data) - {"name", *SETTINGS}
        if unknown:
            raise InvalidInput(f"key request has unknown fields {sorted(unknown)}")
        models = data.get("models", ["*"])
        if isinstance(models, str):
            models = [m.strip() for m in models.split(",")]
        try:
            spec = cls(
                name=str(data.get("name", "")),
                models=tuple(str(m) for m in models),
                rpm=None if data.get("rpm") is None else int(data["rpm"]),
                tpm=None if data.get("tpm") is None else int(data["tpm"]),
                quota=None if data.get("quota") is None else str(data["quota"]),
                expires_at=None if data.get("expires_at") is None else float(data["expires_at"]),
                max_in_flight=(None if data.get("max_in_flight") is None
                               else int(data["max_in_flight"])),
                team=None if data.get("team") is None else str(data["team"]),
                budget=None if data.get("budget") is None else str(data["budget"]),
            )
        except (TypeError, ValueError) as exc:
            raise InvalidInput(f"key request has a field of the wrong type: {exc}") from exc
        spec.validate()
        return spec


SETTINGS = ("models", "rpm", "tpm", "quota", "expires_at", "max_in_flight", "team", "budget")
_BUDGET = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*/\s*(day|month)\s*$")
_DURATION = re.compile(r"^(\d+)([smhd])$")
_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
# How long a rotated key's old secret keeps working unless --grace says otherwise: long
# enough to roll the new one out to every client, short enough that a leaked one dies today.
DEFAULT_GRACE_S = 3600.0
MAX_GRACE_S = 30 * 86400.0


def budget_text(money: float, period: str | None) -> str:
    """A budget as parse_budget reads it back: 1234567.5 per month -> '1234567.5/month'."""
    amount = f"{money:.6f}".rstrip("0").rstrip(".")
    return f"{amount}/{period}"


def parse_budget(text: str) -> tuple[float, str]:
    """'5/month' -> (5.0, 'month'): spend allowed per UTC day or month, in the prices' currency.

    Example: parse_budget("0.25/day") == (0.25, "day")
    """
    match = _BUDGET.match(text)
    if not match:
        raise InvalidInput(
            f"budget {text!r} is not understood; write it as AMOUNT/day or AMOUNT/month,"
            " e.g. 5/month or 0.25/day"
        )
    return float(match.group(1)), match.group(2)


def parse_grace(text: str) -> float:
    """'0', '90s', '10m', '2h' or '1d': how long a rotated key's old secret keeps working."""
    match = _DURATION.match(text.strip())
    if text.strip() == "0":
        return 0.0
    if not match or int(match.group(1)) * _SECONDS[match.group(2)] > MAX_GRACE_S:
        raise InvalidInput(
            f"--grace {text!r} is not a grace period; use 0 or N followed by s, m, h or d,"
            " at most 30d (e.g. 1h)"
        )
    return float(int(match.group(1)) * _SECONDS[match.group(2)])


def parse_expiry(text: str, now: float | None = None) -> float:
    """'2026-01-31' (00:00 UTC that day), an ISO date-time, or 'Nd' days from now."""
    now = time.time() if now is None else now
    relative = re.match(r"^(\d+)d$", text.strip())
    if relative:
        return now + timedelta(days=int(relative.group(1))).total_seconds()
    try:
        if re.match(r"^\d{4}-\d{2}-\d{2}$", text.strip()):
            day = date.fromisoformat(text.strip())
            return datetime(day.year, day.month, day.day, tzinfo=UTC).timestamp()
        moment = datetime.fromisoformat(text.strip())
    except ValueError as exc:
        raise InvalidInput(
            f"--expires {text!r} is not a date; use YYYY-MM-DD, an ISO date-time or Nd (days)"
        ) from exc
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


def _row_to_key(row: Any) -> ApiKey:
    return ApiKey(
        id=row.id,
        name=row.name,
        prefix=row.prefix,
        models=tuple(row.models.split(",")),
        rpm=row.rpm,
        tpm=row.tpm,
        quota=row.quota,
        quota_period=row.quota_period,
        expires_at=row.expires_at,
        created_at=row.created_at,
        revoked_at=row.revoked_at,
        max_in_flight=row.max_in_flight,
        disabled_at=row.disabled_at,
        previous_until=row.previous_until if row.previous_hash else None,
        team=row.team,
        budget=row.budget,
        budget_period=row.budget_period,
    )


def _columns(spec: KeySpec) -> dict[str, Any]:
    """The stored columns of a key's settings."""
    quota, period = parse_quota(spec.quota) if spec.quota else (None, None)
    budget, budget_period = parse_budget(spec.budget) if spec.budget else (None, None)
    return {
        "models": ",".join(m.strip() for m in spec.models),
        "rpm": spec.rpm, "tpm": spec.tpm, "quota": quota, "quota_period": period,
        "expires_at": spec.expires_at, "max_in_flight": spec.max_in_flight,
        "team": spec.team, "budget": budget, "budget_period": budget_period,
    }


def _require_team(conn: Connection, name: str) -> None:
    from podium.services.gateway.teams import require

    require(conn, name)


def _with_team(conn: Connection, key: ApiKey) -> ApiKey:
    """The key with its team's limits, looked up in the same transaction (no extra call)."""
    if key.team is None:
        return key
    from podium.services.gateway.teams import find

    return replace(key, team_limits=find(conn, key.team))


def _named(conn: Connection, name: str) -> Any:
    row = conn.execute(select(keys_table).where(keys_table.c.name == name)).first()
    if row is None:
        raise InvalidInput(f"no key named {name!r}; `podium keys ls` lists the keys")
    return row


def create_op(spec: KeySpec, secret: str) -> Callable[[Connection], ApiKey]:
    """Store a new key under its hash; a name already used (even revoked) is refused."""
    spec.validate()

    def op(conn: Connection) -> ApiKey:
        if conn.execute(select(keys_table.c.id).where(keys_table.c.name == spec.name)).first():
            raise InvalidInput(
                f"a key named {spec.name!r} already exists; revoke it or choose another name"
            )
        if spec.team is not None:
            _require_team(conn, spec.team)
        values = {
            "name": spec.name,
            "key_hash": hash_secret(secret),
            "prefix": secret[:8],
            **_columns(spec),
            "created_at": time.time(),
            "revoked_at": None,
        }
        try:
            conn.execute(keys_table.insert().values(**values))
        except IntegrityError as exc:
            raise InvalidInput(f"a key named {spec.name!r} already exists") from exc
        row = conn.execute(select(keys_table).where(keys_table.c.name == spec.name)).one()
        return _row_to_key(row)

    return op


def list_op() -> Callable[[Connection], list[ApiKey]]:
    def op(conn: Connection) -> list[ApiKey]:
        rows = conn.execute(select(keys_table).order_by(keys_table.c.name))
        return [_row_to_key(r) for r in rows]

    return op


def show_op(name: str) -> Callable[[Connection], ApiKey]:
    return lambda conn: _row_to_key(_named(conn, name))


def update_op(name: str, changes: dict[str, Any]) -> Callable[[Connection], ApiKey]:
    """Change some of a key's settings (a None clears one) and/or disable or enable it.

    Example: update_op("ci", {"rpm": 30, "disabled": False})
    """
    unknown = set(changes) - {*SETTINGS, "disabled"}
    if unknown:
        raise InvalidInput(f"key update has unknown fields {sorted(unknown)}; known: "
                           f"{', '.join((*SETTINGS, 'disabled'))}")
    settings = {k: v for k, v in changes.items() if k != "disabled"}
    KeySpec.from_json({"name": name, **settings})  # each value given, checked before the store

    def op(conn: Connection) -> ApiKey:
        row = _named(conn, name)
        if row.revoked_at is not None:
            raise InvalidInput(f"key {name!r} is revoked and cannot change; create a new key")
        spec = KeySpec.from_json({"name": name, **_row_to_key(row).settings(), **settings})
        values = _columns(spec)
        if spec.team is not None:
            _require_team(conn, spec.team)
        if "disabled" in changes:
            values["disabled_at"] = (row.disabled_at or time.time()) if changes["disabled"] else None
        conn.execute(update(keys_table).where(keys_table.c.id == row.id).values(**values))
        return _row_to_key(conn.execute(select(keys_table).where(keys_table.c.id == row.id)).one())

    return op


def rotate_op(name: str, secret: str, grace_s: float) -> Callable[[Connection], ApiKey]:
    """Give a key a new secret; the one it replaces keeps working for `grace_s` seconds."""
    if not 0 <= grace_s <= MAX_GRACE_S:
        raise InvalidInput(f"grace {grace_s} s is not between 0 and {MAX_GRACE_S:.0f} s")

    def op(conn: Connection) -> ApiKey:
        row = _named(conn, name)
        if row.revoked_at is not None:
            raise InvalidInput(f"key {name!r} is revoked and cannot be rotated; create a new key")
        conn.execute(update(keys_table).where(keys_table.c.id == row.id).values(
            key_hash=hash_secret(secret), prefix=secret[:8],
            previous_hash=row.key_hash if grace_s > 0 else None,
            previous_until=time.time() + grace_s if grace_s > 0 else None,
        ))
        return _row_to_key(conn.execute(select(keys_table).where(keys_table.c.id == row.id)).one())

    return op


def revoke_op(name: str) -> Callable[[Connection], ApiKey]:
    def op(conn: Connection) -> ApiKey:
        row = _named(conn, name)
        if row.revoked_at is None:
            conn.execute(
                update(keys_table).where(keys_table.c.id == row.id).values(revoked_at=time.time())
            )
            row = conn.execute(select(keys_table).where(keys_table.c.id == row.id)).one()
        return _row_to_key(row)

    return op


def lookup_op(key_hash: str) -> Callable[[Connection], ApiKey | None]:
    def op(conn: Connection) -> ApiKey | None:
        row = conn.execute(select(keys_table).where(keys_table.c.key_hash == key_hash)).first()
        if row is not None:
            return _with_team(conn, _row_to_key(row))
        # A secret replaced by a rotation: its state says whether its grace period is over.
        row = conn.execute(
            select(keys_table).where(keys_table.c.previous_hash == key_hash)).first()
        if row is None:
            return None
        return _with_team(conn, replace(_row_to_key(row), by_previous=True))

    return op


class KeyCache:
    """Recent lookups by hash, trusted for at most `ttl` seconds and `size` entries.

    The TTL bounds how late a revocation takes effect; unknown hashes are cached too so
    a flood of bad keys costs one lookup per key per TTL, not one per request.
    """

    def __init__(self, ttl: float, size: int = 10000) -> None:
        self.ttl = ttl
        self.size = size
        self._entries: OrderedDict[str, tuple[float, ApiKey | None]] = OrderedDict()

    def get(self, key_hash: str, now: float) -> tuple[bool, ApiKey | None]:
        entry = self._entries.get(key_hash)
        if entry is None or now - entry[0] > self.ttl:
            return False, None
        return True, entry[1]

    def put(self, key_hash: str, key: ApiKey | None, now: float) -> None:
        self._entries[key_hash] = (now, key)
        self._entries.move_to_end(key_hash)
        while len(self._entries) > self.size:
            self._entries.popitem(last=False)
