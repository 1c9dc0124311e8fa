"""Releases: what each successful `podium up` or rollback laid down, numbered, kept, compared."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from podium.releases.book import ReleaseBook
    from podium.releases.record import ComponentRelease, Release

__all__ = ["ComponentRelease", "Release", "ReleaseBook"]

# Imported when first asked for, not with the package: the gateway's console reads records and
# diffs on nodes that lack what the book (the planner, the registry client) imports.
_FROM = {"ReleaseBook": "book", "ComponentRelease": "record", "Release": "record"}


def __getattr__(name: str) -> Any:
    if name in _FROM:
        return getattr(importlib.import_module(f"{__name__}.{_FROM[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
