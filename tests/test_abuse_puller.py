"""The model puller tried as a careless operator and a hostile network would: redirects to another
server, a disk too small, folders with repeated files, an empty path, a pull that fails midway.
Against a real docker-registry on 127.0.0.1; the servers a redirect leads to run on 127.0.0.1 too."""

from __future__ import annotations

import hashlib
import http.server
import logging
import os
import ssl
import subprocess
import sys
import threading
import urllib.parse
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import requests

from podium.errors import PodiumError
from podium.registry import ModelRef, Registry
from podium.services import model_pull
from tests.fixtures_registry import RunningRegistry, make_tls, registry, registry_auth
from tests.test_registry_cli import at, podium, push, tree_digests

__all__ = ["registry", "registry_auth"]  # fixtures, imported so pytest finds them

TOOL = Path(model_pull.__file__)
NODE_PYTHON = "/usr/bin/python3" if Path("/usr/bin/python3").exists() else sys.executable


def node_pull(base: str, repository: str, digest: str, root: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    """The node-side puller as engine roles run it: the system python3, no site-packages."""
    cmd = [NODE_PYTHON, "-I", "-S", str(TOOL), "--registry", base, "--repository", repository,
           "--digest", digest, "--root", str(root), *extra]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120)


def temp_files(root: Path) -> list[str]:
    return sorted(p.name for p in root.rglob("*") if ".partial" in p.name or p.name.endswith(".part"))


# -- redirects ------------------------------------------------------------------------------------


class Seen:
    """The Authorization header of every request a test server answered, by path."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, str | None]] = []
        self.lock = threading.Lock()

    def add(self, path: str, authorization: str | None) -> None:
        with self.lock:
            self.requests.append((path, authorization))


@contextmanager
def serving(handler: type[http.server.BaseHTTPRequestHandler], tls: tuple[Path, Path] | None = None) -> Iterator[int]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    if tls:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(str(tls[0]), str(tls[1]))
        server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield int(server.server_address[1])
    finally:
        server.shutdown()
        server.server_close()


@contextmanager
def object_store(reg: RunningRegistry) -> Iterator[tuple[str, Seen]]:
    """A second server, as an S3-backed registry redirects to: blobs by digest, signed in the URL."""
    seen = Seen()

    class Blobs(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802  (http.server's spelling)
            seen.add(self.path, self.headers.get("Authorization"))
            digest = urllib.parse.urlsplit(self.path).path.strip("/")
            data = reg.blob_file(digest).read_bytes()
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args: object) -> None:
            pass

    with serving(Blobs) as port:
        yield f"http://127.0.0.1:{port}", seen


@contextmanager
def redirecting_registry(
    reg: RunningRegistry, store: str | None, tls: tuple[Path, Path] | None = None, cut_offs: int = 0
) -> Iterator[tuple[int, Seen]]:
    """The registry's API as a registry with object-store blobs answers it: manifests from the
    registry itself, every blob GET a 307 to a pre-signed URL on the store's host and port.

    store: None to serve blobs from the registry itself.
    cut_offs: this many blob GETs are cut off after half their bytes (a dropped link).
    """
    seen = Seen()
    cuts = [cut_offs]

    class Front(http.server.BaseHTTPRequestHandler):
        def _answer(self, body: bool) -> None:
            seen.add(self.path, self.headers.get("Authorization"))
            if store and "/blobs/sha256:" in self.path:
                digest = self.path.rsplit("/", 1)[1]
                self.send_response(307)
                self.send_header("Location", f"{store}/{digest}?X-Amz-Signature=0123abcd")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            forward = {k: v for k, v in self.headers.items() if k in ("Authorization", "Accept", "Range")}
            upstream = requests.request(self.command, f"http://{reg.address}{self.path}",
                                        headers=forward, timeout=30)
            self.send_response(upstream.status_code)
            for name in ("Content-Type", "Docker-Content-Digest", "WWW-Authenticate"):
                if name in upstream.headers:
                    self.send_header(name, upstream.headers[name])
            for name in ("Content-Range",):
                if name in upstream.headers:
                    self.send_header(name, upstream.headers[name])
            self.send_header("Content-Length", str(len(upstream.content)))
            self.end_headers()
            content = upstream.content
            # Only model files are cut (the small config blob is read whole, not streamed).
            if body and cuts[0] and "/blobs/" in self.path and len(content) > 1 << 19:
                cuts[0] -= 1
                self.wfile.write(content[: len(content) // 2])
                self.wfile.flush()
                self.close_connection = True
                return
            if body:
                self.wfile.write(content)

        def do_GET(self) -> None:  # noqa: N802
            self._answer(True)

        def do_HEAD(self) -> None:  # noqa: N802
            self._answer(False)

        def log_message(self, *args: object) -> None:
            pass

    with serving(Front, tls) as port:
        yield port, seen


def auth_file(tmp_path: Path, reg: RunningRegistry) -> Path:
    path = tmp_path / "pull.auth"
    path.write_text(f"{reg.user}:{reg.password}\n")
    path.chmod(0o600)
    return path


@pytest.fixture(scope="module")
def credentialed_model(registry_auth: RunningRegistry, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    src = tmp_path_factory.mktemp("redirected")
    (src / "model.gguf").write_bytes(b"GGUF" + os.urandom(200_000))
    (src / "config.json").write_text('{"layers": 2}')
    reg = Registry(registry_auth.address, insecure=True, user=registry_auth.user, password=registry_auth.password)
    return src, reg.push(src, "redirected", "v1")


def test_node_puller_follows_a_blob_redirect_to_another_server_without_the_credential(
    registry_auth: RunningRegistry, credentialed_model: tuple[Path, str], tmp_path: Path
) -> None:
    src, digest = credentialed_model
    auth = auth_file(tmp_path, registry_auth)
    with object_store(registry_auth) as (store, at_store), \
            redirecting_registry(registry_auth, store) as (port, at_front):
        done = node_pull(f"http://127.0.0.1:{port}", "models/redirected", digest, tmp_path / "models",
                         "--auth-file", str(auth))
    assert done.returncode == 0, done.stderr
    assert tree_digests(tmp_path / "models" / digest) == tree_digests(src)
    assert at_store.requests, "no blob was fetched from the object store"
    leaked = [path for path, authorization in at_store.requests if authorization]
    assert leaked == [], f"the registry's credential went to another server for {leaked}"
    assert all(authorization for _, authorization in at_front.requests), "the registry itself lost the credential"


def test_client_follows_a_blob_redirect_to_another_server_without_the_credential(
    registry_auth: RunningRegistry, credentialed_model: tuple[Path, str], tmp_path: Path
) -> None:
    src, digest = credentialed_model
    with object_store(registry_auth) as (store, at_store), redirecting_registry(registry_auth, store) as (port, _):
        reg = Registry(f"127.0.0.1:{port}", insecure=True, user=registry_auth.user, password=registry_auth.password)
        reg.pull(ModelRef.parse(f"redirected@{digest}"), tmp_path / "out")
    assert tree_digests(tmp_path / "out") == tree_digests(src)
    assert at_store.requests and not [p for p, a in at_store.requests if a]


@contextmanager
def https_registry_redirecting_to_http(
    reg: RunningRegistry, tmp_path: Path
) -> Iterator[tuple[int, Path, Seen]]:
    """An HTTPS registry (port, its CA) whose blobs redirect to a plain-HTTP object store."""
    ca, cert, key = make_tls(tmp_path)
    with object_store(reg) as (store, at_store), redirecting_registry(reg, store, (cert, key)) as (port, _):
        yield port, ca, at_store
    assert at_store.requests == [], "a blob was fetched over plain HTTP after an HTTPS registry"


def test_node_puller_refuses_a_redirect_from_https_down_to_plain_http(
    registry_auth: RunningRegistry, credentialed_model: tuple[Path, str], tmp_path: Path
) -> None:
    _, digest = credentialed_model
    with https_registry_redirecting_to_http(registry_auth, tmp_path) as (port, ca, _):
        done = node_pull(f"https://127.0.0.1:{port}", "models/redirected", digest, tmp_path / "models",
                         "--ca", str(ca), "--auth-file", str(auth_file(tmp_path, registry_auth)))
    assert done.returncode == 1
    assert "away from HTTPS" in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "models" / digest).exists()


def test_client_refuses_a_redirect_from_https_down_to_plain_http(
    registry_auth: RunningRegistry, credentialed_model: tuple[Path, str], tmp_path: Path
) -> None:
    _, digest = credentialed_model
    with https_registry_redirecting_to_http(registry_auth, tmp_path) as (port, ca, _):
        reg = Registry(f"127.0.0.1:{port}", ca=ca, user=registry_auth.user, password=registry_auth.password)
        with pytest.raises(PodiumError, match="away from HTTPS"):
            reg.pull(ModelRef.parse(f"redirected@{digest}"), tmp_path / "out")
    assert not (tmp_path / "out").exists()


# -- free space -----------------------------------------------------------------------------------


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A real 1 MiB filesystem (tmpfs), so the puller meets a disk too small for the model."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    mount = tmp_path / "small"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "podium-test-small", str(mount)], check=True)
    try:
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], check=True)


@pytest.fixture(scope="module")
def big_model(registry: RunningRegistry, tmp_path_factory: pytest.TempPathFactory) -> str:
    f = tmp_path_factory.mktemp("big") / "big.gguf"
    f.write_bytes(os.urandom(3 << 20))
    return Registry(registry.address, insecure=True).push(f, "toobig", "v1")


def test_client_refuses_a_pull_the_disk_cannot_hold_before_writing(
    registry: RunningRegistry, big_model: str, small_disk: Path
) -> None:
    dest = small_disk / "out"
    with pytest.raises(PodiumError) as refused:
        Registry(registry.address, insecure=True).pull(ModelRef.parse("toobig:v1"), dest)
    message = str(refused.value)
    free = os.statvfs(small_disk).f_bavail * os.statvfs(small_disk).f_frsize
    assert str(dest) in message and f"{3 << 20} bytes" in message and f"{free} bytes free" in message
    assert list(small_disk.iterdir()) == [], "the refused pull wrote into the small disk"


def test_node_puller_refuses_a_pull_the_disk_cannot_hold_before_writing(
    registry: RunningRegistry, big_model: str, small_disk: Path
) -> None:
    root = small_disk / "models"
    done = node_pull(f"http://{registry.address}", "models/toobig", big_model, root)
    assert done.returncode == 1
    assert f"{root} has" in done.stderr and f"needs {3 << 20} bytes" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr
    assert not (root / big_model).exists() and not list(root.glob(".*.pulling"))


# -- repeated files, failures, empty paths --------------------------------------------------------


def package_folder(root: Path) -> Path:
    """A model folder as Python packages ship them: empty __init__.py files and repeated bytes."""
    (root / "pkg" / "sub").mkdir(parents=True)
    (root / "model.safetensors").write_bytes(os.urandom(100_000))
    (root / "pkg" / "__init__.py").write_bytes(b"")
    (root / "pkg" / "sub" / "__init__.py").write_bytes(b"")
    (root / "LICENSE").write_text("same words\n")
    (root / "pkg" / "LICENSE").write_text("same words\n")
    return root


def test_a_folder_with_repeated_and_empty_files_pushes_and_pulls(registry: RunningRegistry, tmp_path: Path) -> None:
    src = package_folder(tmp_path / "src")
    digest = push(registry, src, "packaged", "v1")
    run = podium("pull", "packaged:v1", "--to", str(tmp_path / "out"), *at(registry))
    assert run.exit_code == 0, run.error
    assert tree_digests(tmp_path / "out") == tree_digests(src)
    assert temp_files(tmp_path / "out") == []

    done = node_pull(f"http://{registry.address}", "models/packaged", digest, tmp_path / "models")
    assert done.returncode == 0, done.stderr
    assert tree_digests(tmp_path / "models" / digest) == tree_digests(src)


def test_a_pull_that_fails_midway_leaves_no_temp_files(registry: RunningRegistry, tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.json").write_bytes(os.urandom(50_000))
    (src / "z.gguf").write_bytes(os.urandom(50_000))
    reg = Registry(registry.address, insecure=True)
    reg.push(src, "halfway", "v1")
    blob = registry.blob_file("sha256:" + hashlib.sha256((src / "z.gguf").read_bytes()).hexdigest())
    data = bytearray(blob.read_bytes())
    data[10] ^= 0xFF  # the second file is damaged, after the first was fetched whole
    blob.write_bytes(bytes(data))

    dest = tmp_path / "out"
    with pytest.raises(PodiumError, match="does not match its digest"):
        reg.pull(ModelRef.parse("halfway:v1"), dest)
    left = sorted(p.name for p in dest.iterdir()) if dest.exists() else []
    assert left == [], f"a failed pull left {left}"


def test_push_of_an_empty_path_is_refused(
    registry: RunningRegistry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "notes.txt").write_text("not a model")
    monkeypatch.chdir(tmp_path)  # what "" would stand for
    run = podium("push", "", "--name", "emptypath", "--version", "v1", *at(registry))
    assert run.exit_code == 2
    assert "model path '' is empty" in run.error and "." in run.error
    assert podium("ls", "emptypath", *at(registry)).exit_code == 2, "something was pushed"


def test_a_transfer_cut_off_midway_is_resumed_within_the_pull(
    registry: RunningRegistry, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    f = tmp_path / "src" / "m.gguf"
    f.parent.mkdir()
    f.write_bytes(os.urandom(2 << 20))
    Registry(registry.address, insecure=True).push(f, "cutoff", "v1")
    with redirecting_registry(registry, None, cut_offs=1) as (port, seen), \
            caplog.at_level(logging.WARNING, logger="podium.registry"):
        Registry(f"127.0.0.1:{port}", insecure=True).pull(ModelRef.parse("cutoff:v1"), tmp_path / "out")
    assert "cut off" in caplog.text and "resuming" in caplog.text
    assert tree_digests(tmp_path / "out") == tree_digests(f.parent)


def test_a_transfer_cut_off_every_time_fails_and_leaves_no_temp_files(
    registry: RunningRegistry, tmp_path: Path
) -> None:
    f = tmp_path / "src" / "m.gguf"
    f.parent.mkdir()
    f.write_bytes(os.urandom(2 << 20))
    Registry(registry.address, insecure=True).push(f, "cutoff-always", "v1")
    dest = tmp_path / "out"
    with redirecting_registry(registry, None, cut_offs=100) as (port, _):
        reg = Registry(f"127.0.0.1:{port}", insecure=True)
        with pytest.raises(PodiumError, match="was cut off 3 times"):
            reg.pull(ModelRef.parse("cutoff-always:v1"), dest)
    assert not dest.exists() or list(dest.iterdir()) == []
