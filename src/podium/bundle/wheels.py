"""The bundle's Python wheelhouses: one folder per component, each with a lock file of hashes
that nodes install with `pip install --no-index --require-hashes -r requirements.lock`.

The lock is written from `pip download` and hashes computed over the files it fetched, not with
pip-compile or uv: neither is in Podium's environment, and their locks list the digests of
every file the index holds for a version (all platforms), while this one lists exactly the
files in the folder beside it, for the Python and platform of this control machine.
"""

from __future__ import annotations

import shutil
from collections.abc import Mapping
from pathlib import Path

from packaging.utils import canonicalize_name, parse_sdist_filename, parse_wheel_filename

from podium.bundle.manifest import file_sha256

LOCK = "requirements.lock"
# Folders under wheels/ for vLLM's two builds, so one stack can serve both.
VLLM_HOUSES = {"gpu": "engine-vllm", "cpu": "engine-vllm-cpu"}


def lock_line(file: Path) -> str:
    """`name==version --hash=sha256:…` for one wheel or sdist."""
    if file.name.endswith(".whl"):
        name, version, _, _ = parse_wheel_filename(file.name)
    else:
        name, version = parse_sdist_filename(file.name)
    return f"{canonicalize_name(name)}=={version} --hash=sha256:{file_sha256(file)}"


def write_wheelhouse(folder: Path, files: list[Path]) -> None:
    """Put `files` (and nothing else) in `folder` with their lock file; unchanged files stay."""
    folder.mkdir(parents=True, exist_ok=True)
    names = {f.name for f in files}
    for stale in folder.iterdir():
        if stale.name not in names and stale.name != LOCK:
            stale.unlink()
    for file in files:
        target = folder / file.name
        # Compared by content: a damaged copy in the bundle is replaced, never hashed into the lock.
        if not (target.exists() and file_sha256(target) == file_sha256(file)):
            shutil.copy2(file, target)
    lines = sorted(lock_line(folder / name) for name in names)
    text = "\n".join(lines) + "\n"
    lock = folder / LOCK
    if not (lock.exists() and lock.read_text() == text):
        lock.write_text(text)


def downloaded_files(house: Path) -> list[Path]:
    """The distributions in a wheelhouse folder made by podium.artifacts.wheelhouse."""
    return sorted(p for p in house.iterdir() if p.name.endswith((".whl", ".tar.gz", ".zip")))


def pip_from_mirror(pip: str, mirror: Mapping[str, str], house: str) -> str:
    """A node's pip command that installs one of the bundle's wheelhouses from the mirror: no
    index, no resolving (the lock is the whole closure), every file checked against its sha256.

    pip: the venv's pip on the node.
    mirror: the plan's mirror settings (url, and ca: the stack CA on the node).
    house: the wheelhouse folder under wheels/ (a component, or podium).
    """
    folder = f"{mirror['url']}/wheels/{house}/"
    return " ".join(
        [pip, "install", "--quiet", "--disable-pip-version-check", "--no-index", "--no-deps", "--require-hashes",
         "--cert", mirror["ca"], "--find-links", folder, "-r", f"{folder}{LOCK}"]
    )


def locks_mark(bundle: Path, houses: list[str]) -> str:
    """The wheelhouses' locks by sha256, from the control machine's bundle: kept on the node, it
    tells a role whether the venv it installed from them is still what the bundle holds."""
    return "".join(f"{house} {file_sha256(bundle / 'wheels' / house / LOCK)}\n" for house in houses)
