"""Podium's own wheel, which the gateway nodes install: built once per build of Podium's code,
and the build label (the content of its package) that names it in the gateway's version."""

from __future__ import annotations

import functools
import hashlib
import shutil
import sys
from pathlib import Path

from podium.artifacts import WHEELS, _run, locked

ROOT = Path(__file__).resolve().parents[2]


def podium_wheel(cache: Path = WHEELS) -> Path:
    """Podium's wheel, built from this checkout once per build of its package (and of
    pyproject.toml), for nodes that run Podium's services. Nodes install it offline."""
    folder = _wheel_folder(ROOT, cache)
    wheels = sorted(folder.glob("podium-*.whl")) if folder.exists() else []
    if wheels:
        return wheels[0]
    cache.mkdir(parents=True, exist_ok=True)
    with locked(cache / ".podium-wheel.lock"):
        tmp = cache / f".{folder.name}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        source = _staged(cache / f".{folder.name}.src")
        _run(
            [
                sys.executable,
                "-m",
                "pip",
                "wheel",
                "--no-deps",
                # The build backend installed with Podium, never one fetched: the control machine
                # of an air-gapped site has no index to fetch it from.
                "--no-build-isolation",
                "--disable-pip-version-check",
                "-w",
                str(tmp),
                str(source),
            ],
            what="building Podium's wheel",
            log=cache / ".podium-wheel.log",
        )
        shutil.rmtree(folder, ignore_errors=True)
        tmp.rename(folder)
        shutil.rmtree(source, ignore_errors=True)
    return sorted(folder.glob("podium-*.whl"))[0]


def _staged(stage: Path) -> Path:
    """What the wheel is built from, copied apart: setuptools builds in the source folder and
    keeps its build/lib between builds, so a module removed from src/podium would still ship."""
    shutil.rmtree(stage, ignore_errors=True)
    shutil.copytree(ROOT / "src", stage / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, stage / name)
    return stage


def podium_wheel_cached(cache: Path = WHEELS) -> bool:
    """Whether podium_wheel() returns without building."""
    folder = _wheel_folder(ROOT, cache)
    return folder.exists() and bool(sorted(folder.glob("podium-*.whl")))


def podium_build(root: Path | None = None) -> str:
    """Twelve hex digits of the content of Podium's package (the files its wheel carries): the
    build label of the gateway's version. Taken from the source rather than the wheel's bytes,
    which hold build times, so every control machine at the same code names the same build."""
    root = root or ROOT
    return _podium_build(root.resolve(), _package_fingerprint(root / "src" / "podium"))


def _wheel_folder(root: Path, cache: Path) -> Path:
    """One folder per build of the package and content of pyproject.toml (its metadata)."""
    project = hashlib.sha256((root / "pyproject.toml").read_bytes()).hexdigest()[:8]
    return cache / f"podium-{podium_build(root)}-{project}"


def _package_fingerprint(package: Path) -> tuple[tuple[str, int, int], ...]:
    # Sizes and times: hashing the whole package again is only needed when one of them moved.
    return tuple(sorted((str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in _package_files(package)))


@functools.lru_cache(maxsize=16)
def _podium_build(root: Path, fingerprint: tuple[tuple[str, int, int], ...]) -> str:
    digest = hashlib.sha256()
    package = root / "src" / "podium"
    for path in _package_files(package):
        digest.update(path.relative_to(package.parent).as_posix().encode() + b"\0")
        digest.update(path.read_bytes())
    return digest.hexdigest()[:12]


def _package_files(package: Path) -> list[Path]:
    """What setuptools puts in the wheel: the package's modules, its py.typed and the console's
    templates and stylesheet (pyproject's package-data)."""
    return sorted([*package.rglob("*.py"), *package.glob("py.typed"),
                   *package.glob("services/gateway/console_templates/*")])
