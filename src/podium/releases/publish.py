"""The end of a successful run: record the release it laid down (control machine, then nodes)
and prune what no kept release uses; and, before a run, say which release it would make."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from rich.console import Console

from podium.inventory import HostEntry
from podium.plan.actions import Action
from podium.plan.state import HostState
from podium.releases.book import ReleaseBook
from podium.releases.node import record_on_nodes
from podium.releases.prune import kept_releases
from podium.releases.record import Release, make_release
from podium.stack.model import Stack
from podium.stack.versions import VersionTable


def publish(
    stack: Stack,
    table: VersionTable,
    states: Mapping[str, HostState],
    actions: Sequence[Action],
    entries: Sequence[HostEntry],
    models: Mapping[str, str] | None,
    kind: str,
    console: Console,
) -> Release:
    """Record what the run left as a new release, unless it is exactly the current one (a re-run
    that changed nothing); either way the nodes hold the current release and are pruned."""
    book = ReleaseBook(stack.name)
    current = book.current()
    release = make_release(book.next_number(), stack, table, states, actions, models, kind)
    if release.same_content(current) and kind == "up":
        assert current is not None
        release = current
        console.print(f"release {release.number}: unchanged")
    else:
        book.write(release, stack, table)
        console.print(f"release {release.number} recorded ({kind})")
    kept = kept_releases(book.all(), stack.releases.keep)
    pruned = record_on_nodes([e for e in entries if e[0] in release.hosts], release, kept)
    if pruned:
        console.print(f"pruned {len(pruned)} artifacts of releases older than the last {stack.releases.keep}")
    return release


def preview(book: ReleaseBook, actions: Sequence[Action]) -> tuple[int, dict[str, list[str]]]:
    """(number, host → components it would change) of the release a run of `actions` would
    make; the current number and no hosts when nothing would change."""
    changed: dict[str, list[str]] = {}
    for a in actions:
        if a.action != "keep" and a.component not in changed.get(a.host, []):
            changed.setdefault(a.host, []).append(a.component)
    current = book.current()
    if not changed and current is not None:
        return current.number, {}
    return book.next_number(), changed


def show_preview(console: Console, book: ReleaseBook, actions: Sequence[Action]) -> None:
    number, changed = preview(book, actions)
    if not changed:
        console.print(f"release {number} would stay current: nothing would change")
        return
    console.print(f"release {number} would result:")
    for host, components in changed.items():
        console.print(f"  {host}: {', '.join(components)}", soft_wrap=False)
