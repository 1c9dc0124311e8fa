"""Real OCI registries for the registry tests: Debian's docker-registry on 127.0.0.1."""

from __future__ import annotations

import contextlib
import secrets
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

REGISTRY_BIN = "/usr/bin/docker-registry"

CONFIG = """\
version: 0.1
log:
  level: warn
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: {storage}
  delete:
    enabled: true
  maintenance:
    uploadpurging:
      enabled: false
http:
  addr: 127.0.0.1:{port}
  secret: {secret}
{tls}{auth}"""

TLS = """\
  tls:
    certificate: {cert}
    key: {key}
"""

AUTH = """\
auth:
  htpasswd:
    realm: podium-test
    path: {htpasswd}
"""


@dataclass(frozen=True)
class RunningRegistry:
    """A docker-registry process serving plain HTTP on 127.0.0.1."""

    address: str  # 127.0.0.1:PORT
    storage: Path  # its filesystem storage root
    log: Path
    pid: int
    user: str | None = None
    password: str | None = None
    ca: Path | None = None  # set when it serves HTTPS with a certificate this CA signed

    def blob_file(self, digest: str) -> Path:
        """Where the filesystem driver keeps a blob's bytes (to damage it on purpose)."""
        hex_ = digest.removeprefix("sha256:")
        return self.storage / "docker/registry/v2/blobs/sha256" / hex_[:2] / hex_ / "data"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def running_registry(
    workdir: Path, *, user: str | None = None, tls: bool = False
) -> Iterator[RunningRegistry]:
    """Start docker-registry in `workdir`; stop it after.

    user: require htpasswd Basic auth for this user; the password is random and carried in
        the returned RunningRegistry.
    tls: serve HTTPS with a certificate for 127.0.0.1 from a CA made for this registry.
    """
    if not Path(REGISTRY_BIN).exists():
        pytest.skip("docker-registry is not installed (apt-get install docker-registry)")
    storage = workdir / "storage"
    storage.mkdir(parents=True)
    auth = ""
    password = None
    if user is not None:
        if not shutil.which("htpasswd"):
            pytest.skip("htpasswd is not installed (apt-get install apache2-utils)")
        password = secrets.token_urlsafe(12)
        htpasswd = workdir / "htpasswd"
        # -i reads the password from stdin, so it is never on a command line.
        subprocess.run(
            ["htpasswd", "-B", "-c", "-i", str(htpasswd), user],
            input=password,
            text=True,
            check=True,
            capture_output=True,
        )
        auth = AUTH.format(htpasswd=htpasswd)
    tls_config = ""
    ca = None
    if tls:
        ca, cert, key = make_tls(workdir)
        tls_config = TLS.format(cert=cert, key=key)
    log = workdir / "registry.log"
    for _ in range(5):  # another process may take the free port before the registry binds it
        port = _free_port()
        config = workdir / "config.yml"
        config.write_text(
            CONFIG.format(
                storage=storage,
                port=port,
                secret=secrets.token_hex(16),
                tls=tls_config,
                auth=auth,
            )
        )
        with log.open("ab") as out:
            proc = subprocess.Popen(
                [REGISTRY_BIN, "serve", str(config)], stdout=out, stderr=subprocess.STDOUT
            )
        try:
            if _wait_ready(proc, port, ca):
                address = f"127.0.0.1:{port}"
                yield RunningRegistry(address, storage, log, proc.pid, user, password, ca)
                return
        finally:
            stop(proc)
    raise RuntimeError(f"docker-registry did not start; see {log}:\n{log.read_text()[-2000:]}")


def stop(proc: subprocess.Popen[bytes]) -> None:
    """Terminate a process this test started, killing it if it does not end within 10 s."""
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _wait_ready(proc: subprocess.Popen[bytes], port: int, ca: Path | None) -> bool:
    url = f"{'https' if ca else 'http'}://127.0.0.1:{port}/v2/"
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        try:
            # 200 without auth, 401 with: either way it is serving the API.
            verify: str | bool = str(ca) if ca else True
            if requests.get(url, timeout=1, verify=verify).status_code in (200, 401):
                return True
        except requests.ConnectionError:
            pass
        time.sleep(0.1)
    return False


def make_tls(workdir: Path) -> tuple[Path, Path, Path]:
    """A throwaway CA and a server certificate for 127.0.0.1 signed by it: (ca, cert, key)."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.UTC)

    def name(cn: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    def builder(
        subject: str, issuer: str, public: ec.EllipticCurvePublicKey
    ) -> x509.CertificateBuilder:
        return (
            x509.CertificateBuilder()
            .subject_name(name(subject))
            .issuer_name(name(issuer))
            .public_key(public)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
        )

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_cert = (
        builder("podium test CA", "podium test CA", ca_key.public_key())
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False),
            critical=True,
        )
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        builder("127.0.0.1", "podium test CA", key.public_key())
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    paths = workdir / "ca.pem", workdir / "server.pem", workdir / "server.key"
    paths[0].write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    paths[2].chmod(0o600)
    return paths


@pytest.fixture(scope="session")
def registry() -> Iterator[RunningRegistry]:
    """A registry without auth, deletes enabled, shared by the session's tests."""
    workdir = Path(tempfile.mkdtemp(prefix="podium-registry-"))
    try:
        with running_registry(workdir) as reg:
            yield reg
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture(scope="session")
def registry_auth() -> Iterator[RunningRegistry]:
    """A registry that wants htpasswd Basic auth for user `podium`."""
    workdir = Path(tempfile.mkdtemp(prefix="podium-registry-auth-"))
    try:
        with running_registry(workdir, user="podium") as reg:
            yield reg
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture(scope="session")
def registry_tls() -> Iterator[RunningRegistry]:
    """A registry serving HTTPS with a certificate from its own CA (`.ca`)."""
    workdir = Path(tempfile.mkdtemp(prefix="podium-registry-tls-"))
    try:
        with running_registry(workdir, tls=True) as reg:
            yield reg
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
