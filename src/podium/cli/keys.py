"""`podium keys create|ls|show|update|revoke|disable|enable|rotate`: API keys of a gateway,
via its admin API or its store."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.table import Table

from podium.errors import InvalidInput
from podium.services.gateway.client import AdminApi, KeyAdmin, StoreAdmin, read_token_file
from podium.services.gateway.keys import KeySpec, parse_expiry, parse_grace

keys_app = typer.Typer(help="API keys of a Podium gateway.", no_args_is_help=True)
out = Console(highlight=False)

_GATEWAY = typer.Option(None, "--gateway", help="Gateway URL, e.g. http://127.0.0.1:8080.")
_TOKEN_FILE = typer.Option(None, "--admin-token-file", help="File holding the admin token.")
_STORE = typer.Option(None, "--store", help="Work on the store directly: sqlite:///PATH or"
                      " postgresql+psycopg://...")
_JSON = typer.Option(False, "--json", help="Print JSON.")


_STACK = typer.Argument(None, help="A stack folder: its gateway, admin token and CA are used.")


def key_admin(
    gateway: str | None, admin_token_file: Path | None, store: str | None, stack: str | None = None
) -> KeyAdmin:
    """The backend the arguments name: a stack's gateway, the admin API (--gateway + token) or
    the store (--store)."""
    if stack:
        if gateway or store:
            raise InvalidInput("give either STACK or --gateway/--store, not both")
        from podium.gateway_access import stack_admin

        return stack_admin(stack)
    if store and gateway:
        raise InvalidInput("give either --gateway (with --admin-token-file) or --store, not both")
    if store:
        return StoreAdmin(store)
    if gateway:
        if admin_token_file is None:
            raise InvalidInput("--gateway needs --admin-token-file FILE holding the admin token")
        return AdminApi(gateway, read_token_file(admin_token_file))
    raise InvalidInput(
        "say where the keys live: --gateway URL --admin-token-file F, or --store URL"
    )


def _when(ts: float | None) -> str:
    return "-" if ts is None else time.strftime("%Y-%m-%d %H:%M", time.gmtime(ts))


def _limits(key: dict[str, Any]) -> str:
    parts = []
    if key.get("rpm") is not None:
        parts.append(f"{key['rpm']} rpm")
    if key.get("tpm") is not None:
        parts.append(f"{key['tpm']} tpm")
    if key.get("quota") is not None:
        parts.append(f"{key['quota']}/{key['quota_period']}")
    if key.get("max_in_flight") is not None:
        parts.append(f"{key['max_in_flight']} in flight")
    if key.get("budget") is not None:
        parts.append(f"budget {key['budget']:g}/{key['budget_period']}")
    return ", ".join(parts) or "defaults"


_STACK_OR_NAME = typer.Argument(..., metavar="[STACK] NAME",
                                help="The stack (optional), then the key.")
_NAME_AFTER_STACK = typer.Argument(None, hidden=True)


def _named(stack_or_name: str, name: str | None) -> tuple[str | None, str]:
    """`podium keys VERB NAME` or `podium keys VERB STACK NAME`."""
    return (stack_or_name, name) if name is not None else (None, stack_or_name)


@keys_app.command("create")
def create(
    stack: str | None = _STACK,
    name: str = typer.Option(..., "--name", help="Name of the key (letters, digits, . _ -)."),
    models: str = typer.Option("*", "--models", help="Models it may use: m1,m2 or '*'."),
    rpm: int | None = typer.Option(None, "--rpm", help="Requests per minute."),
    tpm: int | None = typer.Option(None, "--tpm", help="Tokens per minute."),
    quota: str | None = typer.Option(None, "--quota", help="Token quota: N/day or N/month."),
    max_in_flight: int | None = typer.Option(
        None, "--max-in-flight", help="Requests it may have in flight at once, all gateways."),
    expires: str | None = typer.Option(None, "--expires",
                                       help="YYYY-MM-DD (00:00 UTC), ISO date-time, or Nd."),
    team: str | None = typer.Option(None, "--team", help="The team the key belongs to."),
    budget: str | None = typer.Option(None, "--budget",
                                      help="Spend allowed: AMOUNT/day or AMOUNT/month."),
    gateway: str | None = _GATEWAY,
    admin_token_file: Path | None = _TOKEN_FILE,
    store: str | None = _STORE,
    as_json: bool = _JSON,
) -> None:
    """Create a key; the key itself is shown once, alone on the last line.

    Example: podium keys create --gateway http://127.0.0.1:8080 --admin-token-file tok
    --name ci --models tiny --rpm 60 --quota 100000/day
    """
    spec = KeySpec(
        name=name,
        models=tuple(m.strip() for m in models.split(",")),
        rpm=rpm,
        tpm=tpm,
        quota=quota,
        expires_at=parse_expiry(expires) if expires else None,
        max_in_flight=max_in_flight,
        team=team,
        budget=budget,
    )
    spec.validate()
    created = key_admin(gateway, admin_token_file, store, stack).create_key(spec)
    if as_json:
        typer.echo(json.dumps(created))
        return
    out.print(f"created key {created['name']!r} for models {','.join(created['models'])};"
              f" limits: {_limits(created)}; expires: {_when(created.get('expires_at'))}")
    out.print("store it now, it is not shown again:")
    typer.echo(created["key"])


@keys_app.command("ls")
def ls(
    stack: str | None = _STACK,
    gateway: str | None = _GATEWAY,
    admin_token_file: Path | None = _TOKEN_FILE,
    store: str | None = _STORE,
    as_json: bool = _JSON,
) -> None:
    """List keys (never their secrets: only the first characters, to recognise them)."""
    keys = key_admin(gateway, admin_token_file, store, stack).list_keys()
    if as_json:
        typer.echo(json.dumps(keys))
        return
    table = Table("name", "prefix", "team", "models", "limits", "expires", "state")
    for key in keys:
        table.add_row(key["name"], key["prefix"] + "…", key.get("team") or "-",
                      ",".join(key["models"]), _limits(key), _when(key.get("expires_at")),
                      key["state"])
    out.print(table)


@keys_app.command("revoke")
def revoke(
    stack_or_name: str = _STACK_OR_NAME,
    name: str | None = _NAME_AFTER_STACK,
    gateway: str | None = _GATEWAY,
    admin_token_file: Path | None = _TOKEN_FILE,
    store: str | None = _STORE,
    as_json: bool = _JSON,
) -> None:
    """Revoke a key (its usage is kept); gateways refuse it within a second."""
    stack, name = _named(stack_or_name, name)
    key = key_admin(gateway, admin_token_file, store, stack).revoke_key(name)
    if as_json:
        typer.echo(json.dumps(key))
        return
    out.print(f"revoked key {key['name']!r} at {_when(key.get('revoked_at'))} UTC")


@keys_app.command("update")
def update_key(
    stack_or_name: str = _STACK_OR_NAME,
    name: str | None = _NAME_AFTER_STACK,
    models: str | None = typer.Option(None, "--models", help="Models it may use: m1,m2 or '*'."),
    rpm: int | None = typer.Option(None, "--rpm", help="Requests per minute."),
    tpm: int | None = typer.Option(None, "--tpm", help="Tokens per minute."),
    quota: str | None = typer.Option(None, "--quota", help="Token quota: N/day or N/month."),
    max_in_flight: int | None = typer.Option(None, "--max-in-flight",
                                             help="Requests in flight at once, all gateways."),
    expires: str | None = typer.Option(None, "--expires",
                                       help="YYYY-MM-DD (00:00 UTC), ISO date-time, or Nd."),
    team: str | None = typer.Option(None, "--team", help="The team the key belongs to."),
    budget: str | None = typer.Option(None, "--budget", help="AMOUNT/day or AMOUNT/month."),
    gateway: str | None = _GATEWAY,
    admin_token_file: Path | None = _TOKEN_FILE,
    store: str | None = _STORE,
    as_json: bool = _JSON,
) -> None:
    """Change the settings given and keep the others (a declared key returns to what the
    stack says at the next `podium up`).

    Example: podium keys update stacks/lab ci --rpm 30 --expires 30d
    """
    stack, name = _named(stack_or_name, name)
    changes = {
        "models": None if models is None else [m.strip() for m in models.split(",")],
        "rpm": rpm, "tpm": tpm, "quota": quota, "max_in_flight": max_in_flight,
        "expires_at": parse_expiry(expires) if expires else None, "team": team, "budget": budget,
    }
    changes = {k: v for k, v in changes.items() if v is not None}
    if not changes:
        raise InvalidInput("say what to change: --models, --rpm, --tpm, --quota,"
                           " --max-in-flight, --expires, --team or --budget")
    key = key_admin(gateway, admin_token_file, store, stack).update_key(name, changes)
    if as_json:
        typer.echo(json.dumps(key))
        return
    out.print(f"key {key['name']!r}: models {','.join(key['models'])}; limits: {_limits(key)};"
              f" team: {key.get('team') or '-'}; expires: {_when(key.get('expires_at'))}")


@keys_app.command("show")
def show(
    stack_or_name: str = _STACK_OR_NAME,
    name: str | None = _NAME_AFTER_STACK,
    gateway: str | None = _GATEWAY,
    admin_token_file: Path | None = _TOKEN_FILE,
    store: str | None = _STORE,
    as_json: bool = _JSON,
) -> None:
    """One key: its state, models, limits, team, budget, expiry and rotation grace."""
    stack, name = _named(stack_or_name, name)
    admin = key_admin(gateway, admin_token_file, store, stack)
    key = admin.show_key(name)
    # Usage follows the key's name, so it spans rotations; this month's, as budgets count it.
    from podium.services.gateway.limits import period_window

    month = [u for u in admin.usage(period_window(time.time(), "month")[0], None, ["key"])
             if u.key == name]
    key["this_month"] = {"requests": sum(u.requests for u in month),
                         "tokens": sum(u.prompt_tokens + u.completion_tokens for u in month),
                         "cost": round(sum(u.cost for u in month), 6)}
    if as_json:
        typer.echo(json.dumps(key))
        return
    lines = [
        ("state", key["state"]), ("prefix", key["prefix"] + "…"),
        ("models", ",".join(key["models"])), ("limits", _limits(key)),
        ("team", key.get("team") or "-"), ("created", _when(key.get("created_at"))),
        ("expires", _when(key.get("expires_at"))), ("disabled", _when(key.get("disabled_at"))),
        ("revoked", _when(key.get("revoked_at"))),
        ("old secret until", _when(key.get("previous_until"))),
        ("this month", "{requests} requests, {tokens} tokens, cost {cost:.4f}".format(
            **key["this_month"])),
    ]
    for label, value in lines:
        out.print(f"{label:>17}: {value}")


def _switch(stack_or_name: str, name: str | None, disabled: bool, gateway: str | None,
            admin_token_file: Path | None, store: str | None, as_json: bool) -> None:
    stack, name = _named(stack_or_name, name)
    key = key_admin(gateway, admin_token_file, store, stack).update_key(
        name, {"disabled": disabled})
    if as_json:
        typer.echo(json.dumps(key))
        return
    out.print(f"key {key['name']!r} is {key['state']}")


@keys_app.command("disable")
def disable(
    stack_or_name: str = _STACK_OR_NAME,
    name: str | None = _NAME_AFTER_STACK,
    gateway: str | None = _GATEWAY,
    admin_token_file: Path | None = _TOKEN_FILE,
    store: str | None = _STORE,
    as_json: bool = _JSON,
) -> None:
    """Refuse a key until it is enabled again (unlike revoke, this can be undone)."""
    _switch(stack_or_name, name, True, gateway, admin_token_file, store, as_json)


@keys_app.command("enable")
def enable(
    stack_or_name: str = _STACK_OR_NAME,
    name: str | None = _NAME_AFTER_STACK,
    gateway: str | None = _GATEWAY,
    admin_token_file: Path | None = _TOKEN_FILE,
    store: str | None = _STORE,
    as_json: bool = _JSON,
) -> None:
    """Accept a disabled key again."""
    _switch(stack_or_name, name, False, gateway, admin_token_file, store, as_json)


@keys_app.command("rotate")
def rotate(
    stack_or_name: str = _STACK_OR_NAME,
    name: str | None = _NAME_AFTER_STACK,
    grace: str = typer.Option("1h", "--grace",
                              help="How long the old secret keeps working: 0, Ns, Nm, Nh or Nd."),
    gateway: str | None = _GATEWAY,
    admin_token_file: Path | None = _TOKEN_FILE,
    store: str | None = _STORE,
    as_json: bool = _JSON,
) -> None:
    """Give a key a new secret (same name, limits and usage); the old one works for --grace.

    Example: podium keys rotate stacks/lab ci --grace 10m
    """
    stack, name = _named(stack_or_name, name)
    grace_s = parse_grace(grace)
    rotated = key_admin(gateway, admin_token_file, store, stack).rotate_key(name, grace_s)
    if stack:
        from podium.gateway_access import keep_rotated

        keep_rotated(stack, name, rotated["key"])
    if as_json:
        typer.echo(json.dumps(rotated))
        return
    out.print(f"rotated key {name!r}; the old secret works until"
              f" {_when(rotated.get('previous_until'))} UTC" if grace_s else
              f"rotated key {name!r}; the old secret no longer works")
    out.print("store it now, it is not shown again:")
    typer.echo(rotated["key"])


def register(app: typer.Typer) -> None:
    app.add_typer(keys_app, name="keys")
