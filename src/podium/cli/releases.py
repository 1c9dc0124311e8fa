"""`podium history`, `diff`, `rollback` and `console`: the releases a stack has had, and going back to one."""

from __future__ import annotations

import json
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from podium.releases.book import ReleaseBook
from podium.releases.diff import changed_components, release_changes
from podium.stack import load_stack

out = Console(highlight=False)
err = Console(stderr=True, highlight=False)

StackArg = Annotated[str, typer.Argument(help="A stack folder (stacks/lab) or its stack.yaml.")]


def history(
    stack: StackArg,
    as_json: Annotated[bool, typer.Option("--json", help="Print every release in full as JSON.")] = False,
) -> None:
    """List the stack's releases, newest last, with the components each one changed."""
    book = ReleaseBook(load_stack(stack).name)
    releases = book.all()
    if as_json:
        print(json.dumps([r.model_dump(mode="json") for r in releases], indent=2))
        return
    if not releases:
        out.print(f"{book.stack}: no release yet; podium up records release 1")
        return
    table = _table(f"releases of {book.stack}", ("#", "when (UTC)", "by", "kind", "changed"))
    before = None
    for release in releases:
        changed = changed_components(before, release)
        names = sorted({c for comps in changed.values() for c in comps})
        table.add_row(
            str(release.number),
            release.created_at.replace("T", " ").removesuffix("+00:00"),
            release.by,
            release.kind,
            ", ".join(names) or "-",
        )
        before = release
    out.print(table)


def diff(
    stack: StackArg,
    a: Annotated[int, typer.Argument(help="The earlier release.")],
    b: Annotated[int, typer.Argument(help="The later release.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print the changes as JSON.")] = False,
) -> None:
    """Show what changed from release A to release B, per host and component."""
    book = ReleaseBook(load_stack(stack).name)
    changes = release_changes(book.get(a), book.get(b))
    if as_json:
        print(json.dumps([c.to_dict() for c in changes], indent=2))
        return
    if not changes:
        out.print(f"releases {a} and {b} of {book.stack} laid down the same")
        return
    table = _table(f"{book.stack}: release {a} → {b}", ("host", "component", "what", "before", "after"))
    for c in changes:
        table.add_row(c.host, c.component, c.what, c.before, c.after)
    out.print(table)


def _table(title: str, columns: tuple[str, ...]) -> Table:
    # Long cells fold within their column so a table stays inside 80 columns.
    table = Table(title=title, title_justify="left")
    for column in columns:
        table.add_column(column, overflow="fold")
    return table


def rollback(
    stack: StackArg,
    to: Annotated[
        int | None, typer.Option("--to", help="Release to go back to (default: the one before the current).")
    ] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Say what would change; change nothing.")] = False,
) -> None:
    """Bring every host back to an earlier release exactly; the rollback is a release of its own."""
    from podium.releases.rollback import rollback as run_rollback

    result = run_rollback(stack, to, dry_run=dry_run, console=err)
    out.print(f"changes: {result.changes}")
    if result.release is not None:
        out.print(f"release: {result.release}")


def console(
    stack: StackArg,
    port: Annotated[int, typer.Option("--port", min=1, max=65535, help="Port on 127.0.0.1 to serve on.")] = 7780,
) -> None:
    """Serve the gateway's console on this machine's 127.0.0.1, with its rollback form: a rollback
    needs this machine's release snapshots and its SSH to every node, which no gateway holds.

    Example: podium console stacks/lab --port 7780, then open http://127.0.0.1:7780/console/
    """
    from podium.releases.console import serve

    serve(stack, port, lambda url: out.print(f"open {url} (served on 127.0.0.1 only; Ctrl-C stops it)"))


def register(app: typer.Typer) -> None:
    app.command()(history)
    app.command()(diff)
    app.command()(rollback)
    app.command()(console)
