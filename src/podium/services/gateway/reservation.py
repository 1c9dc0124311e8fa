"""What a request may cost at most: reserved against its key at admission, settled by its record.

A request's worst case is its prompt, bounded by the length of its body (every prompt token
is at least one byte of it, and the JSON around each message outweighs the tokens a chat
template adds), plus max_tokens for each completion it asks for. Admission adds that to the
key's token windows while they are under their limits; the usage record later moves each
window by the difference to what was really used, in the same transaction as the record.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, bindparam, delete

from podium.services.gateway.statements import Prepared
from podium.services.gateway.tables import counters_table, in_flight_table, upsert


@dataclass(frozen=True)
class Reservation:
    """What an admitted request holds against its key until its usage record settles it."""

    tokens: int = 0
    # (kind, window start) of every token window the reservation was added to.
    windows: tuple[tuple[str, int], ...] = ()
    # The minute whose request count this request took (None: the key has no RPM limit).
    rpm_window: int | None = None
    # Whether the request holds a row in gateway_in_flight.
    in_flight: bool = False
    # Millionths of the currency its budget windows reserved (its worst-case cost).
    cost: int = 0
    # (owner, kind, window) of the budget and team windows it took: '$day'/'$month' hold
    # cost, 'rpm' one request, the others tokens.
    held: tuple[tuple[int, str, int], ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {"tokens": self.tokens, "windows": [list(w) for w in self.windows],
                "rpm_window": self.rpm_window, "in_flight": self.in_flight,
                "cost": self.cost, "held": [list(h) for h in self.held]}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Reservation:
        return cls(
            tokens=int(data.get("tokens", 0)),
            windows=tuple((str(k), int(w)) for k, w in data.get("windows", [])),
            rpm_window=None if data.get("rpm_window") is None else int(data["rpm_window"]),
            in_flight=bool(data.get("in_flight")),
            cost=int(data.get("cost", 0)),
            held=tuple((int(o), str(k), int(w)) for o, k, w in data.get("held", [])),
        )


def worst_case(endpoint: str, body: dict[str, Any], body_bytes: int,
               default_max_tokens: int) -> tuple[int, int | None]:
    """Tokens to reserve for an OpenAI request, and the max_tokens to send when it set none.

    Example: worst_case("/v1/completions", {"prompt": "Hi", "n": 2, "max_tokens": 8}, 60, 1024)
    == (76, None)
    """
    if endpoint == "/v1/embeddings":
        return body_bytes, None
    asked = body.get("max_completion_tokens") or body.get("max_tokens")
    cap = asked if isinstance(asked, int) and not isinstance(asked, bool) else default_max_tokens
    n = body.get("n")
    choices = n if isinstance(n, int) and not isinstance(n, bool) else 1
    best_of = body.get("best_of")
    if isinstance(best_of, int) and not isinstance(best_of, bool) and best_of > choices:
        choices = best_of
    prompt = body.get("prompt")
    # A list of prompts (texts or token lists) is one completion per prompt.
    if isinstance(prompt, list) and prompt and not isinstance(prompt[0], int):
        choices *= len(prompt)
    return body_bytes + cap * max(1, choices), None if asked is not None else cap


def settle(conn: Connection, key_id: int, reservation: Reservation, request_id: str,
           used_tokens: int, refund_request: bool, used_cost: float = 0.0) -> None:
    """Move the reserved windows to the tokens and money really used; give back what a
    refusal took."""
    delta = used_tokens - reservation.tokens
    moves = [(key_id, kind, window, delta) for kind, window in reservation.windows if delta]
    if refund_request and reservation.rpm_window is not None:
        moves.append((key_id, "rpm", reservation.rpm_window, -1))
    spent = round(used_cost * 1_000_000) - reservation.cost
    for owner, kind, window in reservation.held:
        if kind.startswith("$"):
            moves.append((owner, kind, window, spent))
        elif kind == "rpm":
            moves.extend([(owner, kind, window, -1)] if refund_request else [])
        else:
            moves.append((owner, kind, window, delta))
    for owner, kind, window, amount in moves:
        if amount:
            add(conn, owner, kind, window, amount)
    if reservation.in_flight:
        conn.execute(delete(in_flight_table).where(in_flight_table.c.request_id == request_id))


# A counter window's row, its first value the amount added.
COUNTER_ROW: dict[str, Any] = {"key_id": bindparam("key_id"), "kind": bindparam("kind"),
               "window": bindparam("window"), "value": bindparam("amount")}
_ADD = Prepared(lambda conn: upsert(conn, counters_table, COUNTER_ROW).on_conflict_do_update(
    index_elements=["key_id", "kind", "window"],
    set_={"value": counters_table.c.value + bindparam("amount")},
))


def add(conn: Connection, key_id: int, kind: str, window: int, amount: int) -> None:
    """Add to a counter window, creating it (a settlement may reach a window cleaned up)."""
    _ADD.execute(conn, {"key_id": key_id, "kind": kind, "window": window,
                        "amount": amount}).close()
