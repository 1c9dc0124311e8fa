"""One usage record per request: what the engine reported, priced, and how to store it."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection

from podium.services.gateway.config import Price
from podium.services.gateway.reservation import Reservation, settle
from podium.services.gateway.statements import RowInsert
from podium.services.gateway.tables import usage_table


@dataclass
class UsageRecord:
    """A request as billed: key, model, tokens as the engine counted them, timings."""

    ts: float
    request_id: str
    key_id: int
    key_name: str
    model: str
    endpoint: str
    replica: str = ""
    status: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    latency_ms: float = 0.0
    ttft_ms: float | None = None
    cost: float = 0.0

    def price_with(self, price: Price) -> None:
        self.cost = (
            self.prompt_tokens * price.prompt_per_1k
            + self.completion_tokens * price.completion_per_1k
        ) / 1000.0


def tokens_of(usage: Any) -> tuple[int, int] | None:
    """(prompt, completion) from an OpenAI `usage` object; embeddings have no completion."""
    if not isinstance(usage, dict):
        return None
    prompt = usage.get("prompt_tokens")
    completion = usage.get("completion_tokens", 0)
    if not isinstance(prompt, int) or not isinstance(completion, int):
        return None
    return prompt, completion


def usage_in_body(body: bytes) -> tuple[int, int] | None:
    """The token counts in a whole (non-streamed) OpenAI response body, if it has them."""
    try:
        data = json.loads(body)
    except ValueError:
        return None
    return tokens_of(data.get("usage")) if isinstance(data, dict) else None


def record_op(record: UsageRecord, reservation: Reservation | None) -> RowInsert:
    """Insert the record and settle its request's reservation, in one transaction.

    A request refused after admission (429, 503) gives back the request it took from its
    key's RPM: only requests an engine was asked to serve count against the rate.
    """
    then = None
    if reservation is not None:
        held = reservation

        def then(conn: Connection) -> None:
            settle(conn, record.key_id, held, record.request_id,
                   record.prompt_tokens + record.completion_tokens,
                   record.status in (429, 503), record.cost)

    # vars(), not asdict(): every field is a scalar, and asdict's deep copy took about a
    # fifth of the CPU of committing the record.
    return RowInsert(usage_table, dict(vars(record)), then)
