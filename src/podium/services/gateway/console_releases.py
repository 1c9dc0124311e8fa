"""Releases as the gateway's node keeps them (/var/lib/podium/releases): history, diffs and the
models each release served, read with the same functions as `podium history` and `podium diff`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from podium.errors import InvalidInput
from podium.releases.diff import changed_components, release_changes
from podium.releases.record import Release

# Rollback needs the control machine: its snapshots of each release, its SSH access to every
# node. A gateway has neither, so the console names the command instead of running it, or, when
# `podium console` on the control machine serves it (and says so in this header), shows the
# form whose rollback that console runs.
ROLLBACK = "podium rollback STACK --to {number}"
LOCAL_CONSOLE = "x-podium-local-console"
CONFIRM = "roll back to {number}"


def confirmation_problem(to: str | None, typed: str | None) -> str | None:
    """Why a rollback form may not run (one sentence, nothing run), else None: the operator must
    type the release's number, or `roll back to N`, exactly."""
    if not to or not to.isdigit() or int(to) < 1:
        return f"release {to!r} is not a release number; pick one the history lists"
    expected = CONFIRM.format(number=int(to))
    if typed not in (str(int(to)), expected):
        shown = (typed or "")[:60]
        return (f"the confirmation {shown!r} is not {expected!r}; type {expected!r} (or {int(to)})"
                f" exactly to roll back to release {int(to)}; nothing was run")
    return None


def node_releases(folder: Path | None) -> tuple[list[Release], str]:
    """The releases recorded on this node, oldest first, and a sentence on what is missing."""
    if folder is None:
        return [], ("this gateway was given no releases folder (console.releases_dir), so it"
                    " shows no releases; `podium history STACK` on the control machine lists them")
    if not folder.is_dir():
        return [], f"no release is recorded on this node yet ({folder} does not exist)"
    found, unread = [], []
    for path in sorted(folder.glob("[0-9][0-9][0-9][0-9].json")):
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            host, components = data.pop("host"), data.pop("components")
            found.append(Release.model_validate({**data, "hosts": {host: components}}))
        except (OSError, ValueError, KeyError, TypeError, ValidationError):
            unread.append(path.name)
    note = ("each node records its own components only: releases here show this node's;"
            " `podium history STACK` on the control machine shows every node's")
    if unread:
        note += f"; not readable as release records: {', '.join(unread)}"
    return found, note


def history(releases: list[Release]) -> list[dict[str, Any]]:
    rows, before = [], None
    for release in releases:
        changed = changed_components(before, release)
        rows.append({
            "number": release.number, "created_at": release.created_at, "by": release.by,
            "kind": release.kind,
            "changed": sorted({c for comps in changed.values() for c in comps}),
            "rollback": ROLLBACK.format(number=release.number),
        })
        before = release
    return rows


def diff(releases: list[Release], a: int, b: int) -> list[dict[str, Any]]:
    by_number = {r.number: r for r in releases}
    for n in (a, b):
        if n not in by_number:
            have = ", ".join(str(r.number) for r in releases) or "none"
            raise InvalidInput(f"release {n} is not recorded on this node (releases: {have});"
                               " pick two the history lists")
    return [c.to_dict() for c in release_changes(by_number[a], by_number[b])]


def served_models(releases: list[Release]) -> list[dict[str, str]]:
    """The current release's model references (name:version or name:alias) and digests."""
    if not releases:
        return []
    rows = []
    for ref, digest in sorted(releases[-1].models.items()):
        name, _, tag = ref.partition(":")
        rows.append({"ref": ref, "name": name, "version": tag, "digest": digest})
    return rows
