"""`podium rollback`: run the stack again from a release's snapshot, with its version table and
its model digests, so every host goes back to exactly what that release laid down."""

from __future__ import annotations

from typing import TYPE_CHECKING

from rich.console import Console

from podium.errors import InvalidInput
from podium.releases.book import ReleaseBook
from podium.stack import load_stack
from podium.stack.model import Stack
from podium.stack.versions import VersionTable, load_versions, table_in_use

if TYPE_CHECKING:
    from podium.up import UpResult


def rollback_target(book: ReleaseBook, to: int | None) -> int:
    """Release N to go back to: `to`, else the one before the current."""
    numbers = book.numbers()
    if to is None:
        if len(numbers) < 2:
            have = f"only release {numbers[0]}" if numbers else "no release yet"
            raise InvalidInput(
                f"stack {book.stack} has {have}, so there is none before the current to roll back to; "
                "run podium up to make one"
            )
        return numbers[-2]
    if to < 1:
        raise InvalidInput(f"--to {to}: releases are numbered from 1; give one `podium history` lists")
    book.get(to)
    return to


def snapshot_of(book: ReleaseBook, number: int, current: Stack) -> tuple[Stack, VersionTable]:
    """The stack and effective version table release `number` was laid down from."""
    stack_file, table_file = book.snapshot(number)
    stack = load_stack(stack_file)
    if stack.name != current.name:
        raise InvalidInput(
            f"release {number}'s snapshot {stack_file} is of stack {stack.name}, not {current.name}; "
            "restore the snapshot or roll back to another release"
        )
    # Model files given by a path relative to the stack folder are found where they always were.
    stack._folder = current.folder
    return stack, load_versions(table_file)


def rollback(stack_arg: str, to: int | None, *, dry_run: bool = False, console: Console | None = None) -> UpResult:
    """Bring every host back to release `to` (default: the one before the current); the
    run is a release of its own, numbered next."""
    from podium.up import up

    console = console or Console(stderr=True)
    current = load_stack(stack_arg)
    book = ReleaseBook(current.name)
    number = rollback_target(book, to)
    stack, table = snapshot_of(book, number, current)
    # Before any host is touched: the gateway goes back to the code release N ran, or not at all.
    book.kept_wheel(number)
    target = book.get(number)
    console.print(f"rolling {current.name} back to release {number} ({target.created_at}, by {target.by})")
    _, table_file = book.snapshot(number)
    with table_in_use(table_file):
        return up(stack, dry_run=dry_run, console=console, versions=table, pinned_models=target.models,
                  kind=f"rollback to {number}")
