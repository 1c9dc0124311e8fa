"""Abuse suite, pinning and the smaller review items: a download or apt key that is not the one
the version table records is refused on the node; daemons run unprivileged or say why not; the
gateway's verify keeps secrets out of argv and world-readable files; store passwords never
reach an error; the stack CA vouches only for the stack's own names; NFS squashes root."""

from __future__ import annotations

import contextlib
import functools
import hashlib
import http.server
import os
import re
import shutil
import stat
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509 import verification
from pyinfra.api.exceptions import DeployError
from roles.gpu import repos
from roles.gpu.defaults import DEFAULTS as GPU_DEFAULTS

from podium.errors import InvalidInput, PodiumError
from podium.files import files_for
from podium.monitoring import role_files as rf
from podium.pinned import fetch_artifact_script, fetch_key_script, recorded_sha256
from podium.plan.components import BY_NAME
from podium.registry import ca
from podium.render import REPO
from podium.services.gateway.config import load_config
from podium.services.gateway.store import Store
from podium.stack import load_stack
from podium.stack.versions import VersionTable, load_versions
from tests.fixtures_gateway import GatewayFactory, free_port, gateways  # noqa: F401

EXAMPLES = ("lab", "single-gpu", "hybrid")


# --- downloads pinned by sha256 and fingerprint --------------------------------------------


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    """(folder, base URL): a plain HTTP server on 127.0.0.1 for that folder."""
    folder = tmp_path / "served"
    folder.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(folder))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.RequestHandlerClass.log_message = lambda *a: None  # type: ignore[method-assign]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield folder, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def _sh(script: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["sh", "-c", script], capture_output=True, text=True, timeout=60)


def test_a_download_whose_sha256_differs_is_refused_naming_both_digests(
    served: tuple[Path, str], tmp_path: Path
) -> None:
    folder, url = served
    (folder / "dcgm-exporter").write_bytes(b"#!/bin/sh\necho tampered\n")
    actual = hashlib.sha256(b"#!/bin/sh\necho tampered\n").hexdigest()
    recorded = hashlib.sha256(b"the file the operator recorded").hexdigest()
    dest = tmp_path / "bin" / "dcgm-exporter"
    dest.parent.mkdir()
    done = _sh(fetch_artifact_script("dcgm-exporter", f"{url}/dcgm-exporter", str(dest), recorded))
    assert done.returncode == 1
    assert not dest.exists(), "a refused download must not be installed"
    message = done.stderr.strip()
    assert len(message.splitlines()) == 1, message
    assert "dcgm-exporter" in message and actual in message and recorded in message, message

    done = _sh(fetch_artifact_script("dcgm-exporter", f"{url}/dcgm-exporter", str(dest), actual))
    assert done.returncode == 0, done.stderr
    assert dest.read_bytes() == b"#!/bin/sh\necho tampered\n"
    assert stat.S_IMODE(dest.stat().st_mode) == 0o755


def test_dcgm_exporter_is_operator_supplied_and_refused_until_its_digest_is_recorded() -> None:
    table = load_versions()
    artifact = table.components["monitoring"].artifacts["dcgm-exporter"]
    assert artifact.operator_supplied and artifact.sha256 is None, "no checksum nobody computed"
    with pytest.raises(DeployError) as refused:
        recorded_sha256(table, "monitoring", "dcgm-exporter", "https://mirror.invalid/dcgm-exporter")
    assert "dcgm-exporter" in str(refused.value)
    assert "components.monitoring.artifacts.dcgm-exporter.sha256" in str(refused.value)
    # Once recorded, the role installs exactly that digest.
    data = table.model_dump()
    digest = "a" * 64
    data["components"]["monitoring"]["artifacts"]["dcgm-exporter"]["sha256"] = digest
    assert recorded_sha256(VersionTable.model_validate(data), "monitoring", "dcgm-exporter", "u") == digest


def test_an_artifact_without_sha256_must_be_marked_operator_supplied() -> None:
    data = load_versions().model_dump()
    data["components"]["monitoring"]["artifacts"]["dcgm-exporter"]["operator_supplied"] = False
    with pytest.raises(ValueError, match="dcgm-exporter"):
        VersionTable.model_validate(data)


def _gpg_key(home: Path, uid: str) -> tuple[bytes, str]:
    """A fresh signing key: (armored public key, its fingerprint)."""
    home.mkdir(mode=0o700)
    env = {**os.environ, "GNUPGHOME": str(home)}
    try:
        subprocess.run(["gpg", "--batch", "--passphrase", "", "--quick-gen-key", uid, "ed25519", "sign", "never"],
                       env=env, check=True, capture_output=True, timeout=60)
        listed = subprocess.run(["gpg", "--batch", "--with-colons", "--list-keys", uid],
                                env=env, check=True, capture_output=True, text=True).stdout
        fingerprint = next(line.split(":")[9] for line in listed.splitlines() if line.startswith("fpr:"))
        armored = subprocess.run(["gpg", "--batch", "--armor", "--export", uid],
                                 env=env, check=True, capture_output=True).stdout
    finally:
        # Key generation starts a gpg-agent for the home folder: leave none running.
        subprocess.run(["gpgconf", "--homedir", str(home), "--kill", "gpg-agent"], capture_output=True)
    return armored, fingerprint


@pytest.mark.skipif(not shutil.which("gpg"), reason="gpg is not installed (apt-get install gpg)")
def test_an_apt_key_with_another_fingerprint_is_refused_before_apt_trusts_it(
    served: tuple[Path, str], tmp_path: Path
) -> None:
    folder, url = served
    real, real_fpr = _gpg_key(tmp_path / "g1", "Publisher <publisher@example.invalid>")
    forged, forged_fpr = _gpg_key(tmp_path / "g2", "Publisher <publisher@example.invalid>")
    dest = tmp_path / "keyrings" / "podium-cuda.asc"
    dest.parent.mkdir()

    (folder / "key").write_bytes(forged)
    done = _sh(fetch_key_script("podium-cuda.asc", f"{url}/key", str(dest), real_fpr))
    assert done.returncode == 1 and not dest.exists()
    message = done.stderr.strip()
    assert len(message.splitlines()) == 1, message
    assert "podium-cuda.asc" in message and forged_fpr in message and real_fpr in message, message

    # The right key with a second one appended would make apt trust both: refused too.
    (folder / "key").write_bytes(real + forged)
    done = _sh(fetch_key_script("podium-cuda.asc", f"{url}/key", str(dest), real_fpr))
    assert done.returncode == 1 and not dest.exists(), done.stderr

    (folder / "key").write_bytes(b"<html>not a key</html>")
    done = _sh(fetch_key_script("podium-cuda.asc", f"{url}/key", str(dest), real_fpr))
    assert done.returncode == 1 and "not an OpenPGP key" in done.stderr

    (folder / "key").write_bytes(real)
    done = _sh(fetch_key_script("podium-cuda.asc", f"{url}/key", str(dest), real_fpr))
    assert done.returncode == 0, done.stderr
    assert dest.read_bytes() == real


def test_every_key_a_role_downloads_has_a_fingerprint_in_the_table() -> None:
    table = load_versions()
    node = repos.Node("debian", "12", "amd64", "6.1.0-28-amd64")
    settings = {"source": "nvidia", "container_toolkit": True, "mirror": None}
    for keyring in repos.keys(settings, node, GPU_DEFAULTS):
        assert keyring in table.components["gpu"].keys, f"gpu key {keyring} has no fingerprint"
    assert "podium-grafana.asc" in table.components["monitoring"].keys
    gpu_tasks = (REPO / "roles" / "gpu" / "tasks.py").read_text()
    monitoring_tasks = (REPO / "roles" / "monitoring" / "tasks.py").read_text()
    # A plain files.download would install whatever the server sends.
    assert "files.download" not in gpu_tasks + monitoring_tasks


# --- daemons run unprivileged or say why -------------------------------------------------


@pytest.fixture(scope="module")
def units(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Every systemd unit and drop-in Podium renders for the example stacks (Grafana's too)."""
    out: dict[str, str] = {}
    for name in EXAMPLES:
        folder = tmp_path_factory.mktemp(f"render-{name}")
        done = subprocess.run([sys.executable, "-m", "podium", "render", str(REPO / "stacks" / name),
                               "--out", str(folder)], capture_output=True, text=True, cwd=REPO, timeout=300)
        assert done.returncode == 0, done.stderr[-2000:]
        for path in folder.rglob("*"):
            if path.is_file() and "[Service]" in path.read_text(errors="replace"):
                out[f"{name}/{path.relative_to(folder)}"] = path.read_text()
    data = yaml.safe_load((REPO / "stacks" / "lab" / "stack.yaml").read_text())
    data["monitoring"]["grafana_repository"] = "https://mirror.example.internal/grafana"
    folder = tmp_path_factory.mktemp("grafana")
    (folder / "stack.yaml").write_text(yaml.safe_dump(data))
    stack = load_stack(folder)
    grafana = files_for("monitoring", "ctrl", BY_NAME["monitoring"].settings(stack, "ctrl"))
    out["lab/ctrl/monitoring/" + rf.GRAFANA_DROPIN] = grafana[rf.GRAFANA_DROPIN]
    return out


def _service_section(text: str) -> list[str]:
    lines, inside = [], False
    for line in text.splitlines():
        if line.startswith("["):
            inside = line.strip() == "[Service]"
        elif inside:
            lines.append(line.strip())
    return lines


def test_every_unit_runs_as_a_user_or_says_why_not(units: dict[str, str]) -> None:
    kinds = {re.sub(r"^(podium-(llamacpp|predictive|vllm|sglang))-.*", r"\1", Path(p).name) for p in units}
    assert {"podium-llamacpp", "podium-predictive", "podium-vllm", "podium-sglang", "podium-gateway.service",
            "podium-dcgm-exporter.service", "k3s.service", "podium-registry-gc.service",
            "docker-registry.conf", "podium.conf"} <= kinds, kinds
    for path, text in units.items():
        service = _service_section(text)
        why = [line for line in service if line.startswith("#") and re.search(r"\bRoot\b|as user \S+", line)]
        assert any(line.startswith("User=") for line in service) or why, (
            f"{path}: runs as root without a comment in [Service] saying why"
        )


def test_units_podium_writes_whole_are_sandboxed(units: dict[str, str]) -> None:
    for path, text in units.items():
        service = _service_section(text)
        if not path.endswith(".service") or not any(line.startswith("User=") for line in service):
            continue
        for setting in ("NoNewPrivileges=yes", "ProtectSystem=strict", "ProtectHome=yes", "PrivateTmp=yes"):
            assert setting in service, f"{path}: {setting} missing"
    dcgm = next(t for p, t in units.items() if p.endswith("podium-dcgm-exporter.service"))
    # Unprivileged works only because it asks the host engine instead of opening the GPUs.
    assert "--remote-hostengine-info=localhost:5555" in dcgm and "User=podium-dcgm-exporter" in dcgm


# --- verify keeps secrets off argv and out of world-readable files -----------------------


class RecordingHost:
    """testinfra's local host with every command it runs kept, so a test can read them all."""

    def __init__(self) -> None:
        import testinfra

        self.host = testinfra.get_host("local://")
        self.commands: list[str] = []
        real = self.host.backend.run

        def run(command: str, *args: Any, **kw: Any) -> Any:
            self.commands.append(self.host.backend.get_command(command, *args))
            return real(command, *args, **kw)

        self.host.backend.run = run  # type: ignore[method-assign]
        self.host.backend.get_hostname = lambda: "127.0.0.1"  # type: ignore[method-assign]


def test_gateway_verify_keeps_tokens_out_of_arguments_and_shared_files(
    gateways: GatewayFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch  # noqa: F811
) -> None:
    from roles.gateway import verify

    gw = gateways.start(models={"tiny": {"replicas": [f"http://127.0.0.1:{free_port()}"]}})
    etc = tmp_path / "etc"
    etc.mkdir(mode=0o700)
    (etc / "admin-token").write_text(gw.admin_token + "\n")
    monkeypatch.setattr(verify, "ETC", str(etc))
    recording = RecordingHost()
    host, settings = recording.host, {"tls": False, "port": gw.port, "models": {"tiny": {"kind": "llm"}}}
    before = set(Path("/tmp").iterdir())

    private = verify.open_private(host)
    assert stat.S_IMODE(os.stat(private).st_mode) == 0o700
    header = verify.create_key(host, settings, private, "verify-argv", ["tiny"])
    status, models = verify.api(host, settings, private, "GET", "/v1/models", auth=header)
    assert status == 200, models
    key = Path(header).read_text().split()[-1]
    assert key.startswith("pdm-"), "the header holds the key the gateway made"
    for path in Path(private).iterdir():
        assert stat.S_IMODE(path.stat().st_mode) & 0o077 == 0, f"{path} is readable by others"
    status, _ = verify.api(host, settings, private, "DELETE", "/admin/v1/keys/verify-argv", admin=True)
    assert status in (200, 204)
    host.run(f"rm -rf {private}")

    assert recording.commands, "the verify helpers ran no command"
    for command in recording.commands:
        assert gw.admin_token not in command, f"admin token in a command line: {command}"
        assert key not in command, f"API key in a command line: {command}"
    assert not Path(private).exists(), "the private folder outlived the checks"
    for path in set(Path("/tmp").iterdir()) - before:
        with contextlib.suppress(OSError):
            if path.is_file() and path.stat().st_mode & 0o004:
                text = path.read_text(errors="replace")
                assert gw.admin_token not in text and key not in text, f"secret in world-readable {path}"


# --- store URLs redacted ---------------------------------------------------------------


PASSWORD = "hunter2-Zq9"


def test_store_errors_hide_the_password(tmp_path: Path) -> None:
    with pytest.raises(InvalidInput) as refused:
        Store(f"mysql://podium:{PASSWORD}@127.0.0.1/podium")
    assert PASSWORD not in str(refused.value) and "podium:***@127.0.0.1" in str(refused.value)
    # Nothing listens on this port: the connection fails on 127.0.0.1 and says so.
    store = Store(f"postgresql+psycopg://podium:{PASSWORD}@127.0.0.1:{free_port()}/podium"
                  f"?password={PASSWORD}&connect_timeout=2")
    with pytest.raises(PodiumError) as failed:
        store.create_schema()
    assert "127.0.0.1" in str(failed.value) and PASSWORD not in str(failed.value), str(failed.value)
    config = tmp_path / "gateway.yaml"
    config.write_text(yaml.safe_dump({"store": f"mysql://podium:{PASSWORD}@127.0.0.1/podium", "models": {}}))
    with pytest.raises(InvalidInput) as bad:
        load_config(config)
    assert "store" in str(bad.value) and PASSWORD not in str(bad.value), str(bad.value)


def test_a_gateway_that_cannot_reach_its_store_logs_no_password(
    gateways: GatewayFactory,  # noqa: F811
) -> None:
    gw = gateways.config(models={"tiny": {"replicas": [f"http://127.0.0.1:{free_port()}"]}},
                         store=f"postgresql+psycopg://podium:{PASSWORD}@127.0.0.1:{free_port()}/podium")
    with contextlib.suppress(RuntimeError, TimeoutError):
        gw.start()
    gw.stop()
    log = gw.log()
    assert "127.0.0.1" in log, f"the gateway said nothing about its store: {log[-2000:]}"
    assert PASSWORD not in log, log[-2000:]


# --- the stack CA vouches for the stack's own names only -----------------------------------


@pytest.fixture
def lab_ca(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Any, Path]:
    monkeypatch.setenv("PODIUM_STATE_DIR", str(tmp_path))
    stack = load_stack(REPO / "tests" / "stacks" / "labreg")
    return stack, ca.ca_certificate(stack.name, ca.CaScope.of(stack), replace=True)


def _forged_leaf(stack_name: str, name: str) -> x509.Certificate:
    """What someone holding the CA key could sign: a server certificate for a foreign name."""
    folder = ca.ca_folder(stack_name)
    ca_cert = x509.load_pem_x509_certificate((folder / "ca.crt").read_bytes())
    ca_key = serialization.load_pem_private_key((folder / "ca.key").read_bytes(), None)
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    key = ec.generate_private_key(ec.SECP256R1())
    now = ca._now()
    return (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(x509.oid.NameOID.COMMON_NAME, name)]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - ca.dt.timedelta(minutes=5))
        .not_valid_after(now + ca.dt.timedelta(days=30))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False)
        .sign(ca_key, hashes.SHA256())
    )


def _verify(ca_path: Path, leaf: x509.Certificate, name: str) -> None:
    store = verification.Store([x509.load_pem_x509_certificate(ca_path.read_bytes())])
    verifier = verification.PolicyBuilder().store(store).build_server_verifier(x509.DNSName(name))
    verifier.verify(leaf, [])


def test_the_stack_ca_is_name_constrained_to_the_stacks_names_and_addresses(
    lab_ca: tuple[Any, Path], tmp_path: Path
) -> None:
    stack, ca_path = lab_ca
    cert = x509.load_pem_x509_certificate(ca_path.read_bytes())
    constraints = cert.extensions.get_extension_for_class(x509.NameConstraints)
    assert constraints.critical
    permitted = constraints.value.permitted_subtrees or []
    assert sorted(p.value for p in permitted if isinstance(p, x509.DNSName)) == sorted(stack.node_names)
    assert [str(p.value) for p in permitted if isinstance(p, x509.IPAddress)] == ["10.77.11.0/24"]

    good_path, _ = ca.server_certificate(stack.name, "registry", ["10.77.11.10"], ["ctrl"])
    good = x509.load_pem_x509_certificate(good_path.read_bytes())
    _verify(ca_path, good, "ctrl")
    with pytest.raises(PodiumError, match="bank.example"):
        ca.server_certificate(stack.name, "registry", ["10.77.11.10"], ["bank.example"])
    with pytest.raises(PodiumError, match="192.0.2.1"):
        ca.server_certificate(stack.name, "registry", ["192.0.2.1"], ["ctrl"])

    forged = _forged_leaf(stack.name, "bank.example")
    with pytest.raises(verification.VerificationError):
        _verify(ca_path, forged, "bank.example")
    if shutil.which("openssl"):
        leaf = tmp_path / "forged.crt"
        leaf.write_bytes(forged.public_bytes(serialization.Encoding.PEM))
        done = subprocess.run(["openssl", "verify", "-CAfile", str(ca_path), str(leaf)],
                              capture_output=True, text=True, timeout=30)
        assert done.returncode != 0 and "permitted subtree violation" in done.stderr
        done = subprocess.run(["openssl", "verify", "-CAfile", str(ca_path), str(good_path)],
                              capture_output=True, text=True, timeout=30)
        assert done.returncode == 0, done.stdout + done.stderr


def test_a_ca_without_constraints_is_replaced_on_a_full_deploy(lab_ca: tuple[Any, Path]) -> None:
    stack, ca_path = lab_ca
    grown = ca.CaScope((*stack.node_names, "node9"), ("10.77.11.0/24",))
    # A partial deploy (--only, --limit) keeps the CA the nodes trust.
    assert ca.ca_certificate(stack.name, grown).read_bytes() == ca_path.read_bytes()
    before = ca_path.read_bytes()
    ca.ca_certificate(stack.name, grown, replace=True)
    assert ca_path.read_bytes() != before
    ca.server_certificate(stack.name, "gateway-node9", ["10.77.11.19"], ["node9"])


# --- NFS squashes root ---------------------------------------------------------------------


def test_nfs_exports_squash_root() -> None:
    stack = load_stack(REPO / "stacks" / "lab")
    nfs = stack.model_copy(update={"storage": stack.storage.model_copy(  # type: ignore[union-attr]
        update={"driver": "nfs", "nodes": ["node1"], "replicas": 1})})
    exports = files_for("storage", "node1", BY_NAME["storage"].settings(nfs, "node1"))["podium.exports"]
    lines = [x for x in exports.splitlines() if x and not x.startswith("#")]
    assert lines and all("root_squash" in x for x in lines), exports
    assert "no_root_squash" not in exports
    for template in (REPO / "templates").rglob("*"):
        if template.is_file():
            assert "no_root_squash" not in template.read_text(errors="replace"), template
