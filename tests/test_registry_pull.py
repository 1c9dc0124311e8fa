"""Pull integrity against a real registry: damaged blobs and manifests, interruptions, bad paths."""

from __future__ import annotations

import hashlib
import logging
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import requests

from podium.errors import InvalidInput
from podium.registry import ModelRef, Registry
from podium.registry.artifact import canonical_json
from podium.registry.pull import partial_path
from tests.fixtures_registry import RunningRegistry, registry

__all__ = ["registry"]  # fixture, imported so pytest finds it


def client(reg: RunningRegistry) -> Registry:
    return Registry(reg.address, insecure=True)


def model_file(tmp_path: Path, size: int, name: str = "m.gguf") -> Path:
    f = tmp_path / "src" / name
    f.parent.mkdir(exist_ok=True)
    f.write_bytes(os.urandom(size))  # random: no other test shares its blob
    return f


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def leftovers(dest: Path) -> list[str]:
    return sorted(p.name for p in dest.iterdir()) if dest.exists() else []


def test_damaged_blob_is_refused_and_leaves_nothing(
    registry: RunningRegistry, tmp_path: Path
) -> None:
    reg = client(registry)
    f = model_file(tmp_path, 1 << 20)
    reg.push(f, "damaged", "v1")
    blob = registry.blob_file("sha256:" + sha256(f))
    data = bytearray(blob.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size, one byte flipped
    blob.write_bytes(bytes(data))

    dest = tmp_path / "out"
    with pytest.raises(InvalidInput, match="does not match its digest"):
        reg.pull(ModelRef.parse("damaged:v1"), dest)
    assert leftovers(dest) == []


def test_damaged_manifest_is_refused(registry: RunningRegistry, tmp_path: Path) -> None:
    reg = client(registry)
    digest = reg.push(model_file(tmp_path, 1024), "bad-manifest", "v1")
    stored = registry.blob_file(digest)
    # Still valid JSON, so only the digest check can notice.
    stored.write_bytes(stored.read_bytes().replace(b'"v1"', b'"v9"'))

    for ref in ("bad-manifest:v1", f"bad-manifest@{digest}"):
        with pytest.raises(InvalidInput, match="manifest of model .* does not match its digest"):
            reg.pull(ModelRef.parse(ref), tmp_path / "out")
    assert leftovers(tmp_path / "out") == []


def test_leftover_partial_is_resumed_with_a_range(
    registry: RunningRegistry, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    reg = client(registry)
    f = model_file(tmp_path, 4 << 20)
    reg.push(f, "resumed", "v1")
    dest = tmp_path / "out"
    dest.mkdir()
    half = 3 << 20
    partial_path(dest, sha256(f)).write_bytes(f.read_bytes()[:half])

    with caplog.at_level(logging.INFO, logger="podium.registry"):
        reg.pull(ModelRef.parse("resumed:v1"), dest)
    assert f"resumed m.gguf from byte {half}" in caplog.text
    assert sha256(dest / "m.gguf") == sha256(f)
    assert leftovers(dest) == ["m.gguf"]


def test_leftover_partial_with_wrong_bytes_is_discarded(
    registry: RunningRegistry, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    reg = client(registry)
    f = model_file(tmp_path, 2 << 20)
    reg.push(f, "restarted", "v1")
    dest = tmp_path / "out"
    dest.mkdir()
    partial_path(dest, sha256(f)).write_bytes(os.urandom(1 << 20))

    with caplog.at_level(logging.INFO, logger="podium.registry"):
        reg.pull(ModelRef.parse("restarted:v1"), dest)
    assert "starting it over" in caplog.text
    assert sha256(dest / "m.gguf") == sha256(f)
    assert leftovers(dest) == ["m.gguf"]


KILL_MIDWAY = textwrap.dedent(
    """
    import os, signal, sys
    from pathlib import Path
    from podium.registry import ModelRef, Registry

    address, ref, dest, kill_after = sys.argv[1:]
    seen = 0

    def progress(n):
        global seen
        seen += n
        if seen >= int(kill_after):
            os.kill(os.getpid(), signal.SIGKILL)  # no cleanup, as with a power cut or OOM kill

    Registry(address, insecure=True).pull(ModelRef.parse(ref), Path(dest), progress)
    """
)


def test_pull_killed_midway_recovers(
    registry: RunningRegistry, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    reg = client(registry)
    size = 48 << 20
    f = model_file(tmp_path, size)
    reg.push(f, "killed", "v1")
    dest = tmp_path / "out"
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            KILL_MIDWAY,
            registry.address,
            "killed:v1",
            str(dest),
            str(16 << 20),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == -9, proc.stderr
    assert not (dest / "m.gguf").exists()  # no final file from a pull that did not finish
    partial = partial_path(dest, sha256(f))
    assert 0 < partial.stat().st_size < size

    with caplog.at_level(logging.INFO, logger="podium.registry"):
        reg.pull(ModelRef.parse("killed:v1"), dest)
    assert "resumed m.gguf from byte" in caplog.text
    assert sha256(dest / "m.gguf") == sha256(f)
    assert leftovers(dest) == ["m.gguf"]


def _upload(reg: RunningRegistry, repository: str, data: bytes) -> str:
    """POST an upload session, then PUT the bytes with their digest."""
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    base = f"http://{reg.address}"
    session = requests.post(f"{base}/v2/{repository}/blobs/uploads/", timeout=10)
    assert session.status_code == 202, session.text
    location = session.headers["Location"]
    url = location if location.startswith("http") else base + location
    sep = "&" if "?" in url else "?"
    response = requests.put(f"{url}{sep}digest={digest}", data=data, timeout=10)
    assert response.status_code == 201, response.text
    return digest


def test_file_names_outside_the_folder_are_refused(
    registry: RunningRegistry, tmp_path: Path
) -> None:
    # A manifest written by hand, as a hostile registry or user could.
    repo = "models/escape"
    data = os.urandom(64)
    layer = _upload(registry, repo, data)
    config = canonical_json({"files": [{"path": "../evil", "sha256": layer[7:], "size": 64}]})
    manifest = canonical_json(
        {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {
                "mediaType": "application/vnd.podium.model.config.v1+json",
                "digest": _upload(registry, repo, config),
                "size": len(config),
            },
            "layers": [
                {
                    "mediaType": "application/vnd.podium.model.gguf",
                    "digest": layer,
                    "size": 64,
                    "annotations": {"org.opencontainers.image.title": "../evil"},
                }
            ],
        }
    )
    response = requests.put(
        f"http://{registry.address}/v2/{repo}/manifests/v1",
        data=manifest,
        headers={"Content-Type": "application/vnd.oci.image.manifest.v1+json"},
        timeout=10,
    )
    assert response.status_code == 201, response.text

    dest = tmp_path / "inner" / "out"
    with pytest.raises(InvalidInput, match="outside its own folder"):
        client(registry).pull(ModelRef.parse("escape:v1"), dest)
    assert not (tmp_path / "inner" / "evil").exists()
    assert leftovers(dest) == []
