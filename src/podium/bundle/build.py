"""Lay a stack's bundle into a folder, fetching only what is not there yet.

Layout of the folder:
    manifest.json                  every file with size and sha256, the release, the slots
    versions.yaml                  the version table the bundle was made from
    apt/                           signed apt repository (pool/, dists/bookworm/, podium-bundle.asc)
    wheels/<component>/            wheels and requirements.lock (hashes) per component
    wheels/podium/                 Podium's own wheel
    wheels/engine-llamacpp/        the llama-server wheel built on this machine
    models/<name>/<version>/       each model as an OCI image layout
    slots/<component>/<file>       what the operator drops in (NVIDIA, Grafana, k3s, ...)
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console

from podium import artifacts, own_wheel
from podium.bundle import debs, wheels
from podium.bundle.contents import Contents, Wheelhouse, bundle_contents
from podium.bundle.manifest import MARKER, SLOTS, write_manifest
from podium.bundle.models import write_models
from podium.errors import InvalidInput
from podium.secrets import StackSecrets
from podium.stack.model import Stack
from podium.stack.versions import DEFAULT_TABLE, VersionTable

console = Console(stderr=True, highlight=False)


@dataclass(frozen=True)
class BundleReport:
    """What one `podium bundle` run did: downloads (0 when nothing changed), files, bytes, time."""

    folder: Path
    downloads: int
    files: int
    bytes: int
    seconds: float


def build_bundle(
    stack: Stack,
    table: VersionTable,
    out: Path,
    *,
    table_file: Path = DEFAULT_TABLE,
    lab_image: bool | None = None,
) -> BundleReport:
    """Write the bundle of `stack` into `out`; a second run with nothing changed fetches nothing.

    Args:
        stack: the loaded stack; its `versions:` overrides the table.
        table: the version table.
        out: the bundle folder (made if missing).
        table_file: copied into the bundle so it describes itself.
        lab_image: also carry what debootstrap needs for the lab image (default: lab stacks).

    Example:
        >>> build_bundle(load_stack("stacks/lab"), load_versions(), Path("/srv/bundle"))  # doctest: +SKIP
    """
    start = time.monotonic()
    _check_out(out)
    contents = bundle_contents(stack, table, lab_image)
    out.mkdir(parents=True, exist_ok=True)
    # Written first, so a run that failed halfway is taken up again rather than refused.
    (out / MARKER).touch()
    shutil.copyfile(table_file, out / "versions.yaml")
    downloads = _apt(stack, contents, out / "apt")
    downloads += _wheels(contents, out / "wheels")
    write_models(stack, out / "models")
    for slot in contents.slots:
        (out / slot.path).parent.mkdir(parents=True, exist_ok=True)
    data = write_manifest(out, table.release, stack.name, contents.slots)
    total = sum(f["size"] for f in data["files"])
    report = BundleReport(out, downloads, len(data["files"]), total, time.monotonic() - start)
    console.print(
        f"bundle {out}: {report.files} files, {total / 1e6:.1f} MB, {downloads} downloads, "
        f"{report.seconds:.1f} s; {len(contents.slots)} slots for the operator under {out / SLOTS}"
    )
    return report


def _check_out(out: Path) -> None:
    """A bundle replaces what its folders hold, so it only writes into a new, empty or bundle folder."""
    if out.exists() and not out.is_dir():
        raise InvalidInput(f"--out {out} is a file; give a folder for the bundle")
    if out.is_dir() and any(out.iterdir()) and not (out / MARKER).exists():
        raise InvalidInput(f"--out {out} is not empty and holds no bundle; give a new or empty folder")


def _apt(stack: Stack, contents: Contents, repo: Path) -> int:
    extra = [*debs.required_packages(), *contents.lab_packages] if contents.lab_image else []
    # Without the lab image, debootstrap's base system still comes as the pins' dependencies.
    key = debs.wanted_key(contents.debs, extra)
    if debs.up_to_date(repo, key):
        return 0
    gnupg = StackSecrets(stack.name).path("bundle-gnupg")
    debs.bundle_key(gnupg, stack.name)
    with console.status(f"apt repository: {len(contents.debs)} pinned packages and their dependencies"):
        return debs.build_repository(repo, contents.debs, extra, gnupg)


def wheelhouse_files(house: Wheelhouse) -> list[Path]:
    """The files of one of the bundle's wheelhouses, downloaded (once) into podium.artifacts' cache
    without the distributions it leaves out."""
    return wheels.downloaded_files(
        artifacts.wheelhouse(house.download, house.requirements, leave_out=house.leave_out))


def _wheels(contents: Contents, out: Path) -> int:
    """Wheelhouses from podium.artifacts' caches; counts the ones that had to be fetched or built."""
    fetched = 0
    wanted = {"podium"}
    for name, house in contents.wheelhouses.items():
        fetched += not artifacts.wheelhouse_cached(house.download, house.requirements, leave_out=house.leave_out)
        wheels.write_wheelhouse(out / name, wheelhouse_files(house))
        wanted.add(name)
    fetched += not own_wheel.podium_wheel_cached()
    wheels.write_wheelhouse(out / "podium", [own_wheel.podium_wheel()])
    if contents.llamacpp:
        fetched += not artifacts.llamacpp_wheel_cached(contents.llamacpp)
        llama = out / "engine-llamacpp"
        files = [artifacts.llamacpp_wheel(contents.llamacpp)]
        if pins := contents.wheelhouses.get("engine-llamacpp"):
            files += wheelhouse_files(pins)
        wheels.write_wheelhouse(llama, files)
        wanted.add("engine-llamacpp")
    if out.exists():
        for folder in out.iterdir():
            if folder.name not in wanted:
                shutil.rmtree(folder)
    return fetched
