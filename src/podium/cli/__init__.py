"""The `podium` command: one typer app with a sub-app per area of the appliance."""

from __future__ import annotations

import sys

import typer
from rich.console import Console

from podium.errors import PodiumError

app = typer.Typer(
    name="podium",
    help="Declare a private AI appliance in one file; lay it down, verify it, upgrade it.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
err = Console(stderr=True, highlight=False)


def _register() -> None:
    # Imported here so each area's module stays independent of the others.
    from podium.cli import core

    core.register(app)
    for name in ("lab", "model", "keys", "gateway", "usage", "status", "bundle", "releases",
                 "audit", "finetune"):
        try:
            module = __import__(f"podium.cli.{name}", fromlist=["register"])
        except ModuleNotFoundError as exc:
            if exc.name != f"podium.cli.{name}":
                raise
            continue
        module.register(app)


def main() -> None:
    _register()
    try:
        app()
    except PodiumError as exc:
        err.print(f"error: {exc}", markup=False, soft_wrap=True)
        sys.exit(exc.exit_code)
