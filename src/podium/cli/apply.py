"""`podium up` and `podium verify`: lay a stack down on its hosts, then prove it."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from podium.errors import PodiumError
from podium.stack import load_stack

out = Console(highlight=False)
err = Console(stderr=True, highlight=False)

StackArg = Annotated[str, typer.Argument(help="A stack folder (stacks/lab) or its stack.yaml.")]


def up(
    stack: StackArg,
    limit: Annotated[list[str], typer.Option("--limit", help="Only these hosts (repeatable).")] = [],  # noqa: B006
    only: Annotated[list[str], typer.Option("--only", help="Only these components (repeatable).")] = [],  # noqa: B006
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Say what would change; change nothing.")
    ] = False,
    reapply: Annotated[
        bool,
        typer.Option("--reapply", help="Run roles for components the plan would keep too (repairs drift)."),
    ] = False,
) -> None:
    """Bring the stack's hosts to what the stack declares, component by component."""
    from podium.drivers.pyinfra_runner import kept_connections
    from podium.up import up as run_up

    with kept_connections():
        result = run_up(load_stack(stack), limit=limit, only=only, dry_run=dry_run, reapply=reapply, console=err)
    out.print(f"changes: {result.changes}")


def verify(
    stack: StackArg,
    as_json: Annotated[bool, typer.Option("--json", help="Print results as JSON.")] = False,
) -> None:
    """Run every deployed component's testinfra checks against its hosts."""
    from podium.plan import make_plan
    from podium.stack.versions import load_versions
    from podium.up import recorded_states
    from podium.verify import outcomes_json, run_verify

    loaded = load_stack(stack)
    states = recorded_states(loaded)
    deployed = [
        a
        for a in make_plan(loaded, load_versions(), states)
        if a.host in states and a.component in states[a.host].components
    ]
    outcomes = run_verify(loaded, deployed)
    if as_json:
        print(outcomes_json(outcomes))
    else:
        table = Table(title=f"verify {loaded.name}")
        for column in ("component", "host", "result", "first failure"):
            table.add_column(column)
        for o in outcomes:
            result = f"[green]pass[/] ({o.tests})" if o.passed else "[red]FAIL[/]"
            table.add_row(o.component, o.host, result, o.failures[0] if o.failures else "")
        out.print(table)
    if not outcomes:
        raise PodiumError(
            f"nothing to verify on {loaded.name}: no component is recorded on its hosts; run podium up"
        )
    if not all(o.passed for o in outcomes):
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    app.command()(up)
    app.command()(verify)
