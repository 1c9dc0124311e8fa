"""`podium usage`: requests, tokens and cost per key and/or model, from a gateway's store."""

from __future__ import annotations

import json
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from podium.errors import InvalidInput
from podium.services.gateway.client import AdminApi, StoreAdmin, read_token_file
from podium.services.gateway.usage import GROUPINGS, to_csv

out = Console(highlight=False)


def _moment(text: str | None, flag: str) -> float | None:
    if text is None:
        return None
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise InvalidInput(
            f"{flag} {text!r} is not a date; use YYYY-MM-DD or an ISO date-time"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


def usage(
    stack: str | None = typer.Argument(None, help="A stack folder: its gateway's admin API is used."),
    store: str | None = typer.Option(
        None, "--store", help="sqlite:///PATH or postgresql+psycopg://..."
    ),
    gateway: str | None = typer.Option(None, "--gateway", help="Gateway URL (admin API)."),
    admin_token_file: Path | None = typer.Option(None, "--admin-token-file"),
    since: str | None = typer.Option(None, "--since", help="From this UTC date/time (inclusive)."),
    until: str | None = typer.Option(None, "--until", help="Up to this UTC date/time (exclusive)."),
    by: list[str] = typer.Option(["key", "model"], "--by",
                                 help="Group by key, model, day and/or team."),
    as_csv: bool = typer.Option(False, "--csv", help="Print CSV."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Print usage and cost (priced when each request was served) per key and/or model.

    Example: podium usage --store sqlite:///var/lib/podium/gateway.db --since 2025-01-01 --by key
    """
    groups = [g for item in by for g in item.split(",") if g]
    for group in groups:
        if group not in GROUPINGS:
            raise InvalidInput(f"--by {group!r} is not a grouping; use {', '.join(GROUPINGS)}")
    start, end = _moment(since, "--since"), _moment(until, "--until")
    if store and gateway:
        raise InvalidInput("give either --store or --gateway, not both")
    source: AdminApi | StoreAdmin
    if stack:
        from podium.gateway_access import stack_admin

        source = stack_admin(stack)
    elif store:
        source = StoreAdmin(store)
    elif gateway:
        if admin_token_file is None:
            raise InvalidInput("--gateway needs --admin-token-file FILE holding the admin token")
        source = AdminApi(gateway, read_token_file(admin_token_file))
    else:
        raise InvalidInput(
            "say where usage is kept: --store URL, or --gateway URL --admin-token-file F"
        )
    lines = source.usage(start, end, groups)
    if as_json:
        typer.echo(json.dumps([asdict(line) for line in lines]))
        return
    if as_csv:
        typer.echo(to_csv(lines, groups), nl=False)
        return
    shown = [g for g in ("team", "key", "model", "day") if g in groups]
    table = Table(*shown, "requests", "errors", "prompt tokens", "completion tokens", "cost")
    for line in lines:
        cells = [getattr(line, g) for g in shown]
        table.add_row(*cells, str(line.requests), str(line.errors), str(line.prompt_tokens),
                      str(line.completion_tokens), f"{line.cost:.4f}")
    out.print(table)
    spend = source.budgets()
    if spend:
        budgets = Table("budget of", "name", "period", "spent", "budget", "left",
                        title="spend against budget (this day or month, UTC)")
        for s in spend:
            budgets.add_row(s["kind"], s["name"], s["period"], f"{s['spent']:.4f}",
                            f"{s['budget']:.4f}", f"{max(0.0, s['budget'] - s['spent']):.4f}")
        out.print(budgets)


def register(app: typer.Typer) -> None:
    app.command("usage")(usage)
