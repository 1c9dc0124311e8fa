"""The bundle's Python wheelhouses: one folder per component, each with a lock file of hashes
that nodes install with `pip install --no-index --require-hashes -r requirements.lock`.

The lock is written from `pip download` and hashes computed over the files it fetched, not with
pip-compile or uv: neither is in Podium's environment, and their locks list the digests of
every file the index holds for a version (all platforms), while this one lists exactly the
files in the folder beside it, for the Python and platform of this control machine.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from packaging.utils import canonicalize_name, parse_sdist_filename, parse_wheel_filename

from podium.bundle.manifest import file_sha256

LOCK = "requirements.lock"


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
