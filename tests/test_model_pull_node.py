"""The node-side pull tool against a real docker-registry on 127.0.0.1 with TLS and htpasswd auth,
run the way nodes run it: the system python3 with no site-packages."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from podium.registry import Registry
from podium.services import model_pull
from tests.fixtures_registry import RunningRegistry, running_registry

TOOL = Path(model_pull.__file__)
# The interpreter a bare Debian node has; fall back to this one with -I -S (no site-packages).
NODE_PYTHON = "/usr/bin/python3" if Path("/usr/bin/python3").exists() else sys.executable


@pytest.fixture(scope="module")
def secure_registry() -> Iterator[RunningRegistry]:
    """HTTPS with its own CA and htpasswd auth: what the registry role lays down."""
    workdir = Path(tempfile.mkdtemp(prefix="podium-pull-node-"))
    try:
        with running_registry(workdir, user="puller", tls=True) as reg:
            yield reg
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture(scope="module")
def pushed(secure_registry: RunningRegistry, tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    """A two-file model (weights and a tokenizer in a subfolder) pushed as models/tinyllm:1."""
    src = tmp_path_factory.mktemp("model-src")
    (src / "model.gguf").write_bytes(b"GGUF" + os.urandom(300_000))
    (src / "tok").mkdir()
    (src / "tok" / "tokenizer.json").write_text('{"vocab": ["a", "b"]}')
    reg = Registry(secure_registry.address, ca=secure_registry.ca,
                   user=secure_registry.user, password=secure_registry.password)
    digest = reg.push(src, "tinyllm", "1")
    return {"digest": digest, "src": src}


def _auth_file(tmp_path: Path, reg: RunningRegistry, password: str | None = None) -> Path:
    path = tmp_path / "pull.auth"
    path.write_text(f"{reg.user}:{password or reg.password}\n")
    path.chmod(0o600)
    return path


def _run(reg: RunningRegistry, digest: str, root: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    cmd = [NODE_PYTHON, "-I", "-S", str(TOOL), "--registry", f"https://{reg.address}",
           "--repository", "models/tinyllm", "--digest", digest, "--root", str(root), *extra]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60)


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_pull_by_digest_places_every_file_verified_and_links_the_weights(
    secure_registry: RunningRegistry, pushed: dict[str, object], tmp_path: Path
) -> None:
    digest, src = str(pushed["digest"]), Path(str(pushed["src"]))
    root = tmp_path / "models"
    link = root / f"{digest}.gguf"
    done = _run(secure_registry, digest, root, "--ca", str(secure_registry.ca),
                "--auth-file", str(_auth_file(tmp_path, secure_registry)), "--link", str(link))
    assert done.returncode == 0, done.stderr
    model = root / digest
    assert sorted(p.relative_to(model).as_posix() for p in model.rglob("*") if p.is_file()) == [
        "model.gguf", "tok/tokenizer.json"]
    for rel in ("model.gguf", "tok/tokenizer.json"):
        assert _sha(model / rel) == _sha(src / rel), f"{rel} differs from what was pushed"
    assert link.resolve() == (model / "model.gguf").resolve()
    assert not list(root.glob(".*.pulling")), "the work folder was left behind"

    again = _run(secure_registry, digest, root, "--ca", str(secure_registry.ca),
                 "--auth-file", str(_auth_file(tmp_path, secure_registry)), "--link", str(link))
    assert again.returncode == 0, again.stderr
    assert "present" in again.stdout and "linked" not in again.stdout


def test_a_damaged_blob_is_refused_and_nothing_is_placed(
    secure_registry: RunningRegistry, pushed: dict[str, object], tmp_path: Path
) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "w.gguf").write_bytes(b"GGUF" + os.urandom(50_000))
    reg = Registry(secure_registry.address, ca=secure_registry.ca,
                   user=secure_registry.user, password=secure_registry.password)
    digest = reg.push(src, "tinyllm", "damaged")
    blob = secure_registry.blob_file("sha256:" + _sha(src / "w.gguf"))
    data = bytearray(blob.read_bytes())
    data[100] ^= 0xFF
    blob.write_bytes(bytes(data))
    root = tmp_path / "models"
    done = _run(secure_registry, digest, root, "--ca", str(secure_registry.ca),
                "--auth-file", str(_auth_file(tmp_path, secure_registry)))
    assert done.returncode == 1
    assert "does not match its digest" in done.stderr
    assert not (root / digest).exists(), "a model that failed its digest check was put in place"


def test_a_manifest_digest_that_is_not_in_the_registry_is_a_clear_error(
    secure_registry: RunningRegistry, tmp_path: Path
) -> None:
    done = _run(secure_registry, "sha256:" + "0" * 64, tmp_path, "--ca", str(secure_registry.ca),
                "--auth-file", str(_auth_file(tmp_path, secure_registry)))
    assert done.returncode == 1
    assert "HTTP 404" in done.stderr and "Traceback" not in done.stderr


def test_a_wrong_credential_names_the_401(
    secure_registry: RunningRegistry, pushed: dict[str, object], tmp_path: Path
) -> None:
    done = _run(secure_registry, str(pushed["digest"]), tmp_path, "--ca", str(secure_registry.ca),
                "--auth-file", str(_auth_file(tmp_path, secure_registry, "wrong")))
    assert done.returncode == 1
    assert "refused the pull credential (HTTP 401)" in done.stderr


def test_without_the_stack_ca_the_registry_certificate_is_refused(
    secure_registry: RunningRegistry, pushed: dict[str, object], tmp_path: Path
) -> None:
    done = _run(secure_registry, str(pushed["digest"]), tmp_path,
                "--auth-file", str(_auth_file(tmp_path, secure_registry)))
    assert done.returncode == 1
    assert "TLS check of the registry" in done.stderr


def test_bad_arguments_exit_2_with_one_sentence(secure_registry: RunningRegistry, tmp_path: Path) -> None:
    done = _run(secure_registry, "sha256:nothex", tmp_path)
    assert done.returncode == 2
    assert "--digest 'sha256:nothex'" in done.stderr


def test_a_title_outside_the_model_folder_is_refused() -> None:
    manifest = {"layers": [{"digest": "sha256:" + "a" * 64, "size": 1, "mediaType": "x",
                            "annotations": {model_pull.TITLE: "../../etc/passwd"}}]}
    with pytest.raises(model_pull.PullError, match="outside the model's folder"):
        model_pull.layers(manifest)
