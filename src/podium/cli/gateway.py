"""`podium gateway serve --config FILE` runs the MaaS gateway; `admin-token` makes its token."""

from __future__ import annotations

import hashlib
import json
import os
import secrets
from pathlib import Path

import typer

from podium.errors import InvalidInput
from podium.services.gateway.command import serve

gateway_app = typer.Typer(help="Podium's Model-as-a-Service gateway.", no_args_is_help=True)


# The command lives beside the gateway so that `python -m podium.services.gateway` runs it
# without importing the CLI.
gateway_app.command("serve")(serve)


@gateway_app.command("admin-token")
def admin_token(
    file: Path = typer.Argument(..., help="Where to write the new admin token (mode 0600)."),
    as_json: bool = typer.Option(False, "--json", help="Print {file, sha256} as JSON."),
) -> None:
    """Write a new random admin token to FILE (0600) and print its sha256 for the config.

    Example: podium gateway admin-token /etc/podium/admin-token
    """
    if file.exists():
        raise InvalidInput(f"{file} exists; remove it first or choose another path")
    token = "pdm-admin-" + secrets.token_urlsafe(32)
    fd = os.open(file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(token + "\n")
    digest = hashlib.sha256(token.encode()).hexdigest()
    if as_json:
        typer.echo(json.dumps({"file": str(file), "sha256": digest}))
    else:
        typer.echo(f"admin token written to {file}; in the gateway config use either")
        typer.echo(f"  admin_token_file: {file}")
        typer.echo(f"  admin_token_sha256: {digest}")


def register(app: typer.Typer) -> None:
    app.add_typer(gateway_app, name="gateway")
