"""The bundle's manifest (every file with its size and sha256, the release, the slots) and
`podium bundle verify`, which names each file that is changed, missing, extra or not the one
the version table records."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from podium.errors import InvalidInput
from podium.registry.artifact import hash_file

if TYPE_CHECKING:
    from podium.stack.versions import VersionTable

MANIFEST = "manifest.json"
# Marks a folder `podium bundle` writes into; like the manifest, not listed in it.
MARKER = ".podium-bundle"
FORMAT = 1
SLOTS = "slots"


@dataclass(frozen=True)
class Slot:
    """A place for a file the bundle cannot fetch; the operator drops it in."""

    path: str  # relative to the bundle, under slots/
    component: str
    artifact: str
    sha256: str | None  # None until someone records the real digest in stacks/versions.yaml


@dataclass(frozen=True)
class Problem:
    path: str
    what: str

    def __str__(self) -> str:
        return f"{self.path}: {self.what}"


def file_sha256(path: Path) -> str:
    """The file's sha256 (hex), or "" when there is no such file."""
    return hash_file(path)[0] if path.is_file() else ""


def bundle_files(root: Path) -> list[str]:
    """Every regular file of the bundle but the manifest, its marker and the slots, relative, sorted."""
    out = []
    for path in root.rglob("*"):
        rel = path.relative_to(root)
        if path.is_file() and rel.as_posix() not in (MANIFEST, MARKER) and rel.parts[0] != SLOTS:
            out.append(rel.as_posix())
    return sorted(out)


def write_manifest(root: Path, release: str, stack: str, slots: list[Slot]) -> dict[str, Any]:
    """Hash every file of the bundle into manifest.json; returns what it wrote."""
    files = []
    for rel in bundle_files(root):
        path = root / rel
        files.append({"path": rel, "size": path.stat().st_size, "sha256": file_sha256(path)})
    data = {
        "format": FORMAT,
        "release": release,
        "stack": stack,
        "files": files,
        "slots": [s.__dict__ for s in slots],
    }
    text = json.dumps(data, indent=1, sort_keys=True) + "\n"
    target = root / MANIFEST
    if not (target.exists() and target.read_text() == text):
        target.write_text(text)
    return data


def read_manifest(root: Path) -> dict[str, Any]:
    target = root / MANIFEST
    if not target.is_file():
        raise InvalidInput(f"{root} has no {MANIFEST}; give the folder `podium bundle STACK --out` wrote")
    try:
        data: dict[str, Any] = json.loads(target.read_text())
    except json.JSONDecodeError as exc:
        raise InvalidInput(f"{target} is not JSON ({exc.msg}); rebuild the bundle with `podium bundle`") from None
    if data.get("format") != FORMAT:
        raise InvalidInput(f"{target} has format {data.get('format')!r}; this Podium reads format {FORMAT}")
    return data


def recorded_slots(root: Path, table: VersionTable) -> dict[str, str | None]:
    """Slot path → the sha256 the version table records for it now (None: not yet)."""
    recorded: dict[str, str | None] = {}
    for slot in read_manifest(root)["slots"]:
        entry = table.components.get(slot["component"])
        art = entry.artifacts.get(slot["artifact"]) if entry else None
        recorded[slot["path"]] = art.sha256 if art else None
    return recorded


def verify(root: Path, recorded: dict[str, str | None]) -> list[Problem]:
    """Every way the bundle differs from its manifest and its slots from the version table.

    Args:
        root: the bundle folder.
        recorded: slot path → the sha256 stacks/versions.yaml records now (None: not yet).
    """
    data = read_manifest(root)
    problems = []
    listed = {f["path"]: f for f in data["files"]}
    for rel, entry in sorted(listed.items()):
        path = root / rel
        if not path.is_file():
            problems.append(Problem(rel, "missing"))
        elif path.stat().st_size != entry["size"] or file_sha256(path) != entry["sha256"]:
            problems.append(Problem(rel, f"changed: sha256 {file_sha256(path)}, the manifest says {entry['sha256']}"))
    for rel in bundle_files(root):
        if rel not in listed:
            problems.append(Problem(rel, "extra: not in the manifest"))
    problems += _slot_problems(root, data, recorded)
    return problems


def _slot_problems(root: Path, data: dict[str, Any], recorded: dict[str, str | None]) -> list[Problem]:
    slots = {s["path"]: s for s in data["slots"]}
    problems = []
    for path in sorted(p for p in (root / SLOTS).rglob("*") if p.is_file()) if (root / SLOTS).exists() else []:
        rel = path.relative_to(root).as_posix()
        slot = slots.get(rel)
        if slot is None:
            problems.append(Problem(rel, "extra: no slot of this bundle has this name"))
            continue
        expected = recorded.get(rel)
        where = f"components.{slot['component']}.artifacts.{slot['artifact']}.sha256"
        actual = file_sha256(path)
        if expected is None:
            problems.append(Problem(rel, f"sha256 {actual} is not recorded; check the file and record it as {where}"))
        elif actual != expected:
            problems.append(Problem(rel, f"sha256 {actual} differs from {where} {expected}"))
    return problems
