"""The control machine's record of a stack's releases: <state dir>/<stack>/releases/NNNN.json,
each with a snapshot folder (the stack file, the effective version table and the Podium wheel
its gateway ran) to reproduce it."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import yaml
from pydantic import ValidationError

from podium.errors import InvalidInput, PodiumError
from podium.releases.record import Release, effective_table
from podium.secrets import StackSecrets
from podium.stack.model import Stack
from podium.stack.versions import RUNS_PODIUM_WHEEL, VersionTable

SNAPSHOT_STACK = "stack.yaml"
SNAPSHOT_TABLE = "versions.yaml"
# <snapshot>/podium-wheels/<gateway version>/podium-<version>-py3-none-any.whl: the wheel keeps
# the name pip checks against its metadata; its folder names the build.
SNAPSHOT_WHEELS = "podium-wheels"


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
        os.chmod(snap, 0o700)
        write = StackSecrets.write_private
        write(snap / SNAPSHOT_STACK, Path(stack.file).read_text(encoding="utf-8"))
        write(snap / SNAPSHOT_TABLE, yaml.safe_dump(effective_table(table, stack), sort_keys=False))
        for version in wheel_versions(release):
            self._keep_wheel(snap, version, self.wheel_for(version))
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


    def kept_wheel(self, number: int) -> Path | None:
        """The Podium wheel release `number`'s gateway ran, kept in its snapshot; None when the
        release has no gateway. Refused in one sentence when it was not kept."""
        versions = wheel_versions(self.get(number))
        if not versions:
            return None
        version = versions[0]
        folder = self.snapshot_dir(number) / SNAPSHOT_WHEELS / version
        wheels = sorted(folder.glob("podium-*.whl")) if folder.is_dir() else []
        if not wheels:
            raise InvalidInput(
                f"release {number} of stack {self.stack} kept no Podium wheel for its gateway {version} "
                f"({folder} holds none), so its gateway code cannot be reproduced; roll back to another "
                "release that `podium history` lists"
            )
        return wheels[0]

    def wheel_for(self, version: str) -> Path:
        """The Podium wheel of gateway `version`: this checkout's when it is this checkout's build,
        else the one a release kept."""
        from podium.own_wheel import podium_wheel
        from podium.stack.versions import built, public_version

        if version == built(RUNS_PODIUM_WHEEL[0], public_version(version)):
            return podium_wheel()
        for number in reversed(self.numbers()):
            folder = self.snapshot_dir(number) / SNAPSHOT_WHEELS / version
            wheels = sorted(folder.glob("podium-*.whl")) if folder.is_dir() else []
            if wheels:
                return wheels[0]
        raise InvalidInput(
            f"no release of stack {self.stack} kept the Podium wheel of gateway {version}, and this "
            "checkout builds another; roll back to a release that `podium history` lists"
        )

    @staticmethod
    def _keep_wheel(snap: Path, version: str, wheel: Path) -> None:
        folder = snap / SNAPSHOT_WHEELS / version
        kept = folder / wheel.name
        if kept.is_file():
            return
        folder.mkdir(parents=True, exist_ok=True)
        for part in (snap / SNAPSHOT_WHEELS, folder):
            os.chmod(part, 0o700)
        tmp = folder / f".{wheel.name}.tmp"
        shutil.copyfile(wheel, tmp)
        os.chmod(tmp, 0o600)
        os.replace(tmp, kept)


def wheel_versions(release: Release) -> list[str]:
    """The versions of Podium's wheel the release's gateways ran (one, or none without a gateway)."""
    return sorted({c.version for comps in release.hosts.values() for name, c in comps.items()
                   if name in RUNS_PODIUM_WHEEL})
