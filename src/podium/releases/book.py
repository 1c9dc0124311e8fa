"""The control machine's record of a stack's releases: <state dir>/<stack>/releases/NNNN.json,
each with a snapshot folder (the stack file and the effective version table) to reproduce it."""

from __future__ import annotations

import json
import os
from pathlib import Path

import yaml
from pydantic import ValidationError

from podium.errors import InvalidInput, PodiumError
from podium.releases.record import Release, effective_table
from podium.secrets import StackSecrets
from podium.stack.model import Stack
from podium.stack.versions import VersionTable

SNAPSHOT_STACK = "stack.yaml"
SNAPSHOT_TABLE = "versions.yaml"


class ReleaseBook:
    """Releases of one stack on the control machine, numbered from 1."""

    def __init__(self, stack: str, folder: Path | None = None) -> None:
        self.stack = stack
        self.folder = folder or StackSecrets(stack).folder / "releases"

    def _file(self, number: int) -> Path:
        return self.folder / f"{number:04d}.json"

    def snapshot_dir(self, number: int) -> Path:
        return self.folder / f"{number:04d}"

    def numbers(self) -> list[int]:
        if not self.folder.is_dir():
            return []
        return sorted(int(p.stem) for p in self.folder.glob("[0-9][0-9][0-9][0-9].json"))

    def all(self) -> list[Release]:
        return [self.get(n) for n in self.numbers()]

    def current(self) -> Release | None:
        numbers = self.numbers()
        return self.get(numbers[-1]) if numbers else None

    def next_number(self) -> int:
        numbers = self.numbers()
        return numbers[-1] + 1 if numbers else 1

    def get(self, number: int) -> Release:
        path = self._file(number)
        if not path.is_file():
            have = ", ".join(str(n) for n in self.numbers()) or "none yet"
            raise InvalidInput(
                f"stack {self.stack} has no release {number} (releases: {have}); "
                f"pick one that `podium history` lists"
            )
        try:
            return Release.model_validate(json.loads(path.read_text(encoding="utf-8")))
        except (json.JSONDecodeError, ValidationError) as exc:
            raise PodiumError(f"{path}: not a Podium release record ({str(exc).splitlines()[0]})") from None

    def write(self, release: Release, stack: Stack, table: VersionTable) -> Path:
        """Keep the release and its snapshot; the record is written last, so a release listed
        always has its snapshot."""
        self.folder.mkdir(parents=True, exist_ok=True)
        os.chmod(self.folder, 0o700)
        snap = self.snapshot_dir(release.number)
        snap.mkdir(exist_ok=True)
        write = StackSecrets.write_private
        write(snap / SNAPSHOT_STACK, Path(stack.file).read_text(encoding="utf-8"))
        write(snap / SNAPSHOT_TABLE, yaml.safe_dump(effective_table(table, stack), sort_keys=False))
        path = self._file(release.number)
        write(path, release.to_json())
        return path

    def snapshot(self, number: int) -> tuple[Path, Path]:
        """(stack file, version table) of a release, refused in one sentence when missing."""
        self.get(number)
        snap = self.snapshot_dir(number)
        files = (snap / SNAPSHOT_STACK, snap / SNAPSHOT_TABLE)
        missing = [str(f) for f in files if not f.is_file()]
        if missing:
            raise InvalidInput(
                f"release {number} of stack {self.stack} has no snapshot ({', '.join(missing)} missing), "
                "so it cannot be reproduced; roll back to another release that `podium history` lists"
            )
        return files

