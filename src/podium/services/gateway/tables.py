"""The gateway's tables (keys, teams, audit, usage, limit counters, requests in flight), the
columns added to them since they were first made, and an upsert for either dialect."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sqlalchemy import (
    BigInteger,
    Column,
    Connection,
    Float,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
)
from sqlalchemy.dialects import postgresql, sqlite

metadata = MetaData()

keys_table = Table(
    "gateway_keys",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("name", String(200), nullable=False, unique=True),
    Column("key_hash", String(64), nullable=False, unique=True),
    Column("prefix", String(16), nullable=False),
    Column("models", Text, nullable=False),
    Column("rpm", Integer),
    Column("tpm", Integer),
    Column("quota", BigInteger),
    Column("quota_period", String(8)),
    Column("expires_at", Float),
    Column("created_at", Float, nullable=False),
    Column("revoked_at", Float),
    Column("max_in_flight", Integer),
    Column("disabled_at", Float),
    # The secret a rotation replaced, accepted until previous_until (the grace period).
    Column("previous_hash", String(64), index=True),
    Column("previous_until", Float),
    Column("team", String(200)),
    # Spend allowed per budget_period ('day' or 'month'), in the currency of the prices.
    Column("budget", Float),
    Column("budget_period", String(8)),
)

# Groups of keys with limits and a budget of their own, which every key in them also passes.
teams_table = Table(
    "gateway_teams",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("name", String(200), nullable=False, unique=True),
    Column("models", Text, nullable=False),
    Column("rpm", Integer),
    Column("tpm", Integer),
    Column("budget", Float),
    Column("budget_period", String(8)),
)

# Admin actions, each entry chained to the one before by its hash, so an edit shows.
audit_table = Table(
    "gateway_audit",
    metadata,
    Column("seq", BigInteger().with_variant(Integer, "sqlite"), primary_key=True,
           autoincrement=False),
    Column("ts", Float, nullable=False),
    Column("actor", String(200), nullable=False),
    Column("action", String(64), nullable=False),
    Column("target", String(300), nullable=False),
    Column("detail", Text, nullable=False),
    Column("prev_hash", String(64), nullable=False),
    Column("hash", String(64), nullable=False),
)

usage_table = Table(
    "gateway_usage",
    metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True),
    Column("ts", Float, nullable=False),
    Column("request_id", String(64), nullable=False),
    Column("key_id", Integer, nullable=False),
    Column("key_name", String(200), nullable=False),
    Column("model", String(200), nullable=False),
    Column("endpoint", String(64), nullable=False),
    Column("replica", String(300), nullable=False),
    Column("status", Integer, nullable=False),
    Column("prompt_tokens", Integer, nullable=False),
    Column("completion_tokens", Integer, nullable=False),
    Column("latency_ms", Float, nullable=False),
    Column("ttft_ms", Float),
    Column("cost", Float, nullable=False),
    Index("ix_gateway_usage_ts", "ts"),
    # Replaying the spool looks records up by request_id, so none is counted twice.
    Index("ix_gateway_usage_request_id", "request_id"),
)

# Records older than the retention, summed per UTC day, key and model.
usage_daily_table = Table(
    "gateway_usage_daily",
    metadata,
    Column("day", String(10), primary_key=True),
    Column("key_name", String(200), primary_key=True),
    Column("model", String(200), primary_key=True),
    Column("requests", BigInteger, nullable=False),
    Column("errors", BigInteger, nullable=False),
    Column("prompt_tokens", BigInteger, nullable=False),
    Column("completion_tokens", BigInteger, nullable=False),
    Column("cost", Float, nullable=False),
)

# Fixed-window counters for RPM, TPM, quotas and budgets, shared by every gateway on the store:
# key_id is a key's id, or minus a team's id; budgets ('$day', '$month') count millionths.
counters_table = Table(
    "gateway_counters",
    metadata,
    Column("key_id", Integer, primary_key=True),
    Column("kind", String(8), primary_key=True),
    Column("window", BigInteger, primary_key=True),
    Column("value", BigInteger, nullable=False),
)

# Requests admitted and not yet recorded, for per-key limits on requests in flight. A row
# expires at `until`, so a gateway killed mid-request does not hold its key's slots forever.
in_flight_table = Table(
    "gateway_in_flight",
    metadata,
    Column("request_id", String(64), primary_key=True),
    Column("key_id", Integer, nullable=False),
    Column("until", Float, nullable=False),
    Index("ix_gateway_in_flight_key", "key_id"),
)

# Columns added after a table was first created: (table, column, SQL type).
ADDED_COLUMNS = (
    ("gateway_keys", "max_in_flight", "INTEGER"),
    ("gateway_keys", "disabled_at", "FLOAT"),
    ("gateway_keys", "previous_hash", "VARCHAR(64)"),
    ("gateway_keys", "previous_until", "FLOAT"),
    ("gateway_keys", "team", "VARCHAR(200)"),
    ("gateway_keys", "budget", "FLOAT"),
    ("gateway_keys", "budget_period", "VARCHAR(8)"),
)


def upsert(conn: Connection, table: Table, values: Mapping[str, Any]) -> Any:
    """An INSERT ... ON CONFLICT statement for this connection's dialect (SQLite or PostgreSQL)."""
    dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
    return dialect.insert(table).values(**values)
