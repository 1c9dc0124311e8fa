"""`podium validate`, `plan` and `render`: read a stack, say what would happen, show the files."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from podium.errors import InvalidInput
from podium.plan import make_plan
from podium.plan.state import HostState, parse_states
from podium.stack import load_stack
from podium.stack.versions import load_versions

out = Console(highlight=False)

StackArg = Annotated[str, typer.Argument(help="A stack folder (stacks/lab) or its stack.yaml.")]

ACTION_STYLE = {
    "install": "green",
    "upgrade": "cyan",
    "downgrade": "magenta",
    "reconfigure": "yellow",
    "remove": "red",
    "keep": "dim",
}


def validate(stack: StackArg) -> None:
    """Check a stack file without touching any host."""
    loaded = load_stack(stack)
    out.print(
        f"{stack}: valid ({len(loaded.nodes)} nodes, {len(loaded.models)} models, "
        f"{len(loaded.engines)} engines)"
    )


def plan(
    stack: StackArg,
    as_json: Annotated[bool, typer.Option("--json", help="Print the actions as JSON.")] = False,
    state_from: Annotated[
        Path | None,
        typer.Option(help="Recorded state to plan against (a state.json, or a list of them)."),
    ] = None,
) -> None:
    """Print the ordered actions that would bring the hosts to the stack."""
    loaded = load_stack(stack)
    states: dict[str, HostState] = {}
    if state_from is not None:
        if not state_from.is_file():
            raise InvalidInput(f"--state-from {state_from}: no such file; give a state.json path")
        states = parse_states(state_from.read_text(encoding="utf-8"), str(state_from))
    actions = make_plan(loaded, load_versions(), states)
    if as_json:
        print(json.dumps([a.to_dict() for a in actions], indent=2))
        return
    table = Table(title=f"plan for {loaded.name}", show_lines=False)
    for column in ("#", "component", "host", "action", "from", "to"):
        table.add_column(column)
    for i, action in enumerate(actions, 1):
        style = ACTION_STYLE[action.action]
        table.add_row(
            str(i),
            action.component,
            action.host,
            f"[{style}]{action.action}[/]",
            action.from_version or "-",
            action.to_version or "-",
        )
    out.print(table)
    counts: dict[str, int] = {}
    for action in actions:
        counts[action.action] = counts.get(action.action, 0) + 1
    out.print(", ".join(f"{k}: {v}" for k, v in sorted(counts.items())))
    from podium.gateway_access import show_key_plan
    from podium.releases.book import ReleaseBook
    from podium.releases.publish import show_preview

    book = ReleaseBook(loaded.name)
    show_preview(out, book, actions)
    show_key_plan(out, loaded, book)
    if states and any(a.component.startswith("engine-") and a.action == "reconfigure"
                      for a in actions):
        # Recorded engine configs include the model digests the registry gave at apply time;
        # this command reads no registry, so those engines cannot compare equal here.
        out.print(
            "note: engines are planned without model digests (podium plan reads no registry);"
            f" `podium up --dry-run {stack}` resolves them and shows what would really change"
        )


def render(
    stack: StackArg,
    out_dir: Annotated[Path, typer.Option("--out", help="Folder to write <host>/<component>/...")],
) -> None:
    """Render every file every role would write, per host, so a reviewer can read them."""
    from podium.files import files_for

    loaded = load_stack(stack)
    count = 0
    for action in make_plan(loaded, load_versions()):
        for relative, content in files_for(action.component, action.host, action.settings).items():
            target = out_dir / action.host / action.component / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(content, encoding="utf-8")
            count += 1
    if loaded.kubernetes:
        from podium.cluster import render_manifests

        for name, text in render_manifests(loaded, load_versions()).items():
            target = out_dir / "cluster" / name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(text, encoding="utf-8")
            count += 1
    out.print(f"rendered {count} files into {out_dir}")


def inventory(
    stack: StackArg,
    out_file: Annotated[
        Path | None, typer.Option("--out", help="The file to write (default: inventory/<stack>.py in the repo).")
    ] = None,
) -> None:
    """Write the pyinfra inventory of a stack, so `pyinfra inventory/<stack>.py roles/<role>/deploy.py` runs a role."""
    from podium.inventory import write_inventory
    from podium.registry.ca import CaScope, ca_certificate
    from podium.render import REPO

    loaded = load_stack(stack)
    target = out_file or REPO / "inventory" / f"{loaded.name}.py"
    if target.is_dir():
        raise InvalidInput(f"--out {target}: is a folder; give the file to write, e.g. {target / loaded.name}.py")
    # The roles read the stack CA on the control machine; make it as `podium up` would, so the
    # inventory alone is enough to run any of them. One that exists is kept as it is.
    ca_certificate(loaded.name, CaScope.of(loaded))
    write_inventory(loaded, make_plan(loaded, load_versions()), target)
    out.print(f"wrote {target} ({len(loaded.nodes)} hosts)")


def register(app: typer.Typer) -> None:
    from podium.cli import apply

    app.command()(validate)
    app.command()(plan)
    app.command()(render)
    app.command()(inventory)
    apply.register(app)
