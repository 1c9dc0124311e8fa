"""`podium audit [verify]`: the gateway's hash-chained log of admin actions, printed or checked."""

from __future__ import annotations

import csv
import io
import json
import time
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.table import Table

from podium.cli.keys import _GATEWAY, _JSON, _STORE, _TOKEN_FILE, key_admin
from podium.cli.usage import _moment
from podium.errors import InvalidInput

out = Console(highlight=False)
COLUMNS = ("seq", "ts", "actor", "action", "target", "detail", "prev_hash", "hash")


def _head_file(stack: str) -> Path:
    from podium.secrets import StackSecrets

    return StackSecrets(stack).path("audit-head")


def _check_head(stack: str | None, entries: list[dict[str, Any]],
                check: dict[str, Any]) -> dict[str, Any]:
    """Hashes cannot show entries cut off the end, so the control machine remembers the last
    head it saw and checks that the log still holds it; then remembers the new head."""
    if stack is None or not check["holds"]:
        return check
    path = _head_file(stack)
    if path.is_file():
        seen = json.loads(path.read_text())
        found = next((e for e in entries if e["seq"] == seen["seq"]), None)
        if found is None or found["hash"] != seen["hash"]:
            return {**check, "holds": False, "broken_at": seen["seq"],
                    "reason": "it was in the log when last verified here and is gone or changed"}
    if entries:
        from podium.secrets import StackSecrets

        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        StackSecrets.write_private(path, json.dumps(
            {"seq": entries[-1]["seq"], "hash": entries[-1]["hash"]}))
    return check


def audit(
    verb_or_stack: str | None = typer.Argument(
        None, metavar="[verify] [STACK]", help="'verify' to check the chain; the stack folder."),
    stack_arg: str | None = typer.Argument(None, hidden=True),
    since: str | None = typer.Option(None, "--since", help="From this UTC date/time (inclusive)."),
    gateway: str | None = _GATEWAY,
    admin_token_file: Path | None = _TOKEN_FILE,
    store: str | None = _STORE,
    as_json: bool = _JSON,
    as_csv: bool = typer.Option(False, "--csv", help="Print CSV (details as JSON)."),
) -> None:
    """Print the audit log (time, actor, action, target; never a secret), or with `verify`
    say whether its hash chain holds and, if not, the position of the first broken entry.

    Example: podium audit stacks/lab --since 2026-01-01 --csv; podium audit verify stacks/lab
    """
    verifying = verb_or_stack == "verify"
    stack = stack_arg if verifying else verb_or_stack
    if stack_arg is not None and not verifying:
        raise InvalidInput(f"`podium audit {verb_or_stack} {stack_arg}`: the only verb is verify")
    api = key_admin(gateway, admin_token_file, store, stack)
    if verifying:
        check = _check_head(stack, api.audit(), api.audit_verify())
        if as_json:
            typer.echo(json.dumps(check))
        elif check["holds"]:
            out.print(f"the audit log holds: {check['entries']} entries, each chained to the last")
        else:
            out.print(f"the audit log is broken at entry {check['broken_at']}: {check['reason']}")
        if not check["holds"]:
            raise typer.Exit(1)
        return
    entries = api.audit(_moment(since, "--since"))
    if as_json:
        typer.echo(json.dumps(entries))
        return
    if as_csv:
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(COLUMNS)
        for e in entries:
            writer.writerow([json.dumps(e[c], sort_keys=True) if c == "detail" else e[c]
                             for c in COLUMNS])
        typer.echo(buffer.getvalue(), nl=False)
        return
    table = Table("#", "time (UTC)", "actor", "action", "target", "detail")
    for e in entries:
        detail = ", ".join(f"{k}={v}" for k, v in e["detail"].items())
        table.add_row(str(e["seq"]), time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(e["ts"])),
                      e["actor"], e["action"], e["target"], detail)
    out.print(table)


def register(app: typer.Typer) -> None:
    app.command("audit")(audit)
