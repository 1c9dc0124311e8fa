"""API keys: how they are made, stored (hashed), looked up, cached and revoked."""

from __future__ import annotations

import hashlib
import re
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

from sqlalchemy import Connection, select, update
from sqlalchemy.exc import IntegrityError

from podium.errors import InvalidInput
from podium.services.gateway.config import parse_quota
from podium.services.gateway.store import keys_table

KEY_PREFIX = "pdm-"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


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

    def allows(self, model: str) -> bool:
        return "*" in self.models or model in self.models

    def state(self, now: float) -> str:
        if self.revoked_at is not None:
            return "revoked"
        if self.expires_at is not None and now >= self.expires_at:
            return "expired"
        return "active"

    def to_json(self, now: float | None = None) -> dict[str, Any]:
        data = asdict(self)
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

    def validate(self) -> None:
        if not _NAME.match(self.name):
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

    @classmethod
    def from_json(cls, data: Any) -> KeySpec:
        if not isinstance(data, dict):
            raise InvalidInput("key request body must be a JSON object with at least 'name'")
        unknown = set(data) - {"name", "models", "rpm", "tpm", "quota", "expires_at",
                               "max_in_flight"}
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
            )
        except (TypeError, ValueError) as exc:
            raise InvalidInput(f"key request has a field of the wrong type: {exc}") from exc
        spec.validate()
        return spec


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
    )


def create_op(spec: KeySpec, secret: str) -> Callable[[Connection], ApiKey]:
    """Store a new key under its hash; a name already used (even revoked) is refused."""
    spec.validate()
    quota, period = parse_quota(spec.quota) if spec.quota else (None, None)

    def op(conn: Connection) -> ApiKey:
        if conn.execute(select(keys_table.c.id).where(keys_table.c.name == spec.name)).first():
            raise InvalidInput(
                f"a key named {spec.name!r} already exists; revoke it or choose another name"
            )
        values = {
            "name": spec.name,
            "key_hash": hash_secret(secret),
            "prefix": secret[:8],
            "models": ",".join(m.strip() for m in spec.models),
            "rpm": spec.rpm,
            "tpm": spec.tpm,
            "quota": quota,
            "quota_period": period,
            "expires_at": spec.expires_at,
            "created_at": time.time(),
            "revoked_at": None,
            "max_in_flight": spec.max_in_flight,
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


def revoke_op(name: str) -> Callable[[Connection], ApiKey]:
    def op(conn: Connection) -> ApiKey:
        row = conn.execute(select(keys_table).where(keys_table.c.name == name)).first()
        if row is None:
            raise InvalidInput(f"no key named {name!r}; `podium keys ls` lists the keys")
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
        return None if row is None else _row_to_key(row)

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
