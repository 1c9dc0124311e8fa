"""The registry role's files (docker-registry config, nginx site, units), the stack CA and the
htpasswd accounts, from the labreg stack's settings."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import stat
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import bcrypt
import pytest
import yaml
from cryptography import x509
from roles.registry import accounts

from podium.files import files_for
from podium.plan.components import BY_NAME
from podium.registry import ca
from podium.registry.access import Credential, pull_credential, push_credential
from podium.stack import load_stack
from podium.stack.ports import listeners
from tests.fixtures_registry import stop

LABREG = Path(__file__).parent / "stacks" / "labreg"


@pytest.fixture(scope="module")
def rendered() -> dict[str, str]:
    stack = load_stack(str(LABREG))
    return files_for("registry", "ctrl", BY_NAME["registry"].settings(stack, "ctrl"))


@pytest.fixture
def state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("PODIUM_STATE_DIR", str(tmp_path))
    # As `podium up` does first: the CA, for the stack's names and addresses.
    ca.ca_certificate("labreg", ca.CaScope.of(load_stack(str(LABREG))), replace=True)
    return tmp_path


def test_registry_keeps_data_on_the_storage_path_with_deletes_and_metrics(
    rendered: dict[str, str],
) -> None:
    config = yaml.safe_load(rendered["config.yml"])
    assert config["storage"]["filesystem"]["rootdirectory"] == "/srv/podium/registry"
    assert config["storage"]["delete"] == {"enabled": True}
    assert config["http"]["net"] == "unix"
    assert config["http"]["addr"] == "/run/docker-registry/registry.sock"
    assert config["http"]["debug"] == {
        "addr": "127.0.0.1:5002",
        "prometheus": {"enabled": True, "path": "/metrics"},
    }
    assert "auth" not in config, "accounts are nginx's job: the registry's own auth has no rights"


def test_debug_listener_stays_on_loopback_and_nginx_passes_on_metrics_alone(
    rendered: dict[str, str],
) -> None:
    # docker-registry's debug listener also serves expvar and pprof: never on the network.
    assert yaml.safe_load(rendered["config.yml"])["http"]["debug"]["addr"].startswith("127.0.0.1:")
    site = rendered["podium-registry.conf"]
    metrics = site[site.index("listen 5001;") :]
    assert "location = /metrics {\n        proxy_pass http://127.0.0.1:5002/metrics;" in metrics
    assert "location / {\n        return 404;" in metrics



def _free_run(width: int) -> int:
    """A port P on 127.0.0.1 with P .. P+width-1 all free just now."""
    for _ in range(50):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            base = int(probe.getsockname()[1])
        if base + width > 65535:
            continue
        try:
            with contextlib.ExitStack() as held:
                for port in range(base, base + width):
                    sock = held.enter_context(socket.socket())
                    sock.bind(("127.0.0.1", port))
            return base
        except OSError:
            continue
    raise RuntimeError("no run of free ports on 127.0.0.1")


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=2) as answer:
            return answer.status, answer.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, ""


def test_real_registry_and_nginx_serve_metrics_but_keep_the_debug_listener_on_loopback(
    tmp_path: Path, state: Path
) -> None:
    """The rendered config.yml and nginx site, run for real on 127.0.0.1: Prometheus gets
    /metrics through nginx; expvar and pprof stay on the registry's loopback listener."""
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    if not Path(nginx).exists() or not Path("/usr/bin/docker-registry").exists():
        pytest.skip("nginx and docker-registry run the rendered files (apt-get install nginx docker-registry)")
    port = _free_run(3)
    stack = load_stack(str(LABREG))
    assert stack.registry is not None
    stack = stack.model_copy(update={"registry": stack.registry.model_copy(update={"port": port})})
    files = files_for("registry", "ctrl", BY_NAME["registry"].settings(stack, "ctrl"))
    sock = tmp_path / "registry.sock"
    config = files["config.yml"].replace("/srv/podium/registry", str(tmp_path / "storage"))
    (tmp_path / "config.yml").write_text(config.replace("/run/docker-registry/registry.sock", str(sock)))
    # This registry is reached on 127.0.0.1: a CA made for that address signs its certificate.
    ca.ca_certificate("labreg", ca.CaScope(("ctrl",), ("127.0.0.1/32",)), replace=True)
    cert, key = ca.server_certificate("labreg", "registry", ["127.0.0.1"], ["ctrl"])
    site = files["podium-registry.conf"].replace("/run/docker-registry/registry.sock", str(sock))
    site = site.replace("/etc/podium/registry/tls.crt", str(cert)).replace("/etc/podium/registry/tls.key", str(key))
    # Test traffic stays on 127.0.0.1: the site's listeners are pinned there.
    site = site.replace(f"listen {port} ssl;", f"listen 127.0.0.1:{port} ssl;")
    site = site.replace(f"listen {port + 1};", f"listen 127.0.0.1:{port + 1};")
    (tmp_path / "site.conf").write_text(site)
    (tmp_path / "nginx.conf").write_text(
        f"pid {tmp_path}/nginx.pid;\nerror_log {tmp_path}/error.log;\nevents {{}}\n"
        f"http {{ access_log off; client_body_temp_path {tmp_path}/body; proxy_temp_path {tmp_path}/proxy; "
        f"include {tmp_path}/site.conf; }}\n"
    )
    with (tmp_path / "registry.log").open("wb") as log:
        registry = subprocess.Popen(["/usr/bin/docker-registry", "serve", str(tmp_path / "config.yml")],
                                    stdout=log, stderr=subprocess.STDOUT)
    front = subprocess.Popen([nginx, "-c", str(tmp_path / "nginx.conf"), "-p", str(tmp_path), "-g", "daemon off;"],
                             stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 15
        status, body = 0, ""
        while time.monotonic() < deadline and status != 200:
            time.sleep(0.2)
            status, body = _get(f"http://127.0.0.1:{port + 1}/metrics")
        assert status == 200 and "registry_" in body, (
            f"no registry metrics through nginx: {status}\n{(tmp_path / 'registry.log').read_text()[-1500:]}"
        )
        assert _get(f"http://127.0.0.1:{port + 1}/debug/vars")[0] == 404, "nginx passes on /metrics alone"
        assert _get(f"http://127.0.0.1:{port + 2}/debug/vars")[0] == 200, "the registry's own debug listener"
        listening = subprocess.run(["ss", "-Hltn", f"sport = :{port + 2}"], capture_output=True, text=True).stdout
        assert listening.split() and all(
            line.split()[3] == f"127.0.0.1:{port + 2}" for line in listening.strip().splitlines()
        ), listening
    finally:
        stop(front)
        stop(registry)

def test_metrics_port_is_open_to_monitoring_only() -> None:
    stack = load_stack(str(LABREG))
    found = {(i.port, i.what): i.audience for i in listeners(stack) if i.component == "registry"}
    assert found == {
        (5000, "registry"): ("stack", "admin"),
        (5001, "registry metrics"): ("monitoring",),
        (5002, "registry debug"): ("local",),
    }
    openings = {o["port"] for o in BY_NAME["base"].settings(stack, "ctrl")["openings"]}
    assert {5000, 5001} <= openings and 5002 not in openings, "the loopback debug port is never opened"


def test_nginx_reads_with_either_account_and_writes_with_the_push_account_only(
    rendered: dict[str, str],
) -> None:
    site = rendered["podium-registry.conf"]
    assert "listen 5000 ssl;" in site
    location = site[site.index("location /v2/") :]
    outer = location[: location.index("limit_except")]
    inner = location[location.index("limit_except GET HEAD {") : location.index("}")]
    assert "auth_basic_user_file /etc/podium/registry/htpasswd-pull;" in outer
    assert "auth_basic_user_file /etc/podium/registry/htpasswd-push;" in inner
    assert "server unix:/run/docker-registry/registry.sock;" in site
    assert "client_max_body_size 0;" in site


def test_nginx_accepts_the_site(rendered: dict[str, str], tmp_path: Path, state: Path) -> None:
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    if not Path(nginx).exists():
        pytest.skip("nginx is not installed; it checks the rendered site (apt-get install nginx)")
    cert, key = ca.server_certificate("labreg", "registry", ["10.77.11.10"], ["ctrl"])
    site = rendered["podium-registry.conf"]
    site = site.replace("/etc/podium/registry/tls.crt", str(cert))
    site = site.replace("/etc/podium/registry/tls.key", str(key))
    (tmp_path / "site.conf").write_text(site)
    (tmp_path / "nginx.conf").write_text(
        f"pid {tmp_path}/nginx.pid;\nerror_log {tmp_path}/error.log;\nevents {{}}\n"
        f"http {{ include {tmp_path}/site.conf; }}\n"
    )
    result = subprocess.run(
        [nginx, "-t", "-q", "-c", str(tmp_path / "nginx.conf"), "-p", str(tmp_path)],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr


def test_plain_http_when_the_stack_turns_tls_off() -> None:
    stack = load_stack(str(LABREG))
    assert stack.registry is not None
    plain = stack.model_copy(update={"registry": stack.registry.model_copy(update={"tls": False})})
    site = files_for("registry", "ctrl", BY_NAME["registry"].settings(plain, "ctrl"))
    text = site["podium-registry.conf"]
    assert "listen 5000;" in text and "ssl_certificate" not in text


def test_units_wait_for_the_storage_mount_and_gc_pauses_the_registry(
    rendered: dict[str, str],
) -> None:
    assert "RequiresMountsFor=/srv/podium/registry" in rendered["docker-registry.conf"]
    gc = rendered["podium-registry-gc.service"]
    assert "ExecStartPre=+/bin/systemctl stop docker-registry.service" in gc
    assert "ExecStart=/usr/bin/docker-registry garbage-collect /etc/docker/registry/config.yml" in gc
    assert "ExecStopPost=+/bin/systemctl start docker-registry.service" in gc
    assert "OnCalendar=" in rendered["podium-registry-gc.timer"]


def test_the_ca_is_made_once_and_kept_0600(state: Path) -> None:
    first = ca.ca_certificate("labreg")
    assert ca.ca_certificate("labreg") == first
    again = first.read_bytes()
    assert ca.ca_certificate("labreg").read_bytes() == again
    folder = first.parent
    assert stat.S_IMODE(os.stat(folder).st_mode) == 0o700
    for name in ("ca.crt", "ca.key"):
        assert stat.S_IMODE(os.stat(folder / name).st_mode) == 0o600, name
    cert = x509.load_pem_x509_certificate(again)
    assert cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca


def test_server_certificate_is_signed_by_the_ca_and_kept_until_its_names_change(state: Path) -> None:
    cert_path, key_path = ca.server_certificate("labreg", "registry", ["10.77.11.10"], ["ctrl"])
    issuer = x509.load_pem_x509_certificate(ca.ca_certificate("labreg").read_bytes())
    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    cert.verify_directly_issued_by(issuer)
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.DNSName) == ["ctrl"]
    assert [str(a) for a in names.get_values_for_type(x509.IPAddress)] == ["10.77.11.10"]
    assert stat.S_IMODE(os.stat(key_path).st_mode) == 0o600
    before = cert_path.read_bytes()
    ca.server_certificate("labreg", "registry", ["10.77.11.10"], ["ctrl"])
    assert cert_path.read_bytes() == before, "an unchanged certificate must not be reissued"
    ca.server_certificate("labreg", "registry", ["10.77.11.20"], ["ctrl"])
    assert cert_path.read_bytes() != before, "a new address needs a new certificate"


def test_accounts_are_bcrypt_and_a_matching_hash_is_kept(state: Path) -> None:
    push, pull = push_credential("labreg"), pull_credential("labreg")
    assert push.user != pull.user and push.password != pull.password
    assert push.password not in repr(push)
    text = accounts.htpasswd([pull, push])
    parsed = accounts.parse(text)
    assert list(parsed) == [pull.user, push.user]
    assert bcrypt.checkpw(push.password.encode(), parsed[push.user].encode())
    assert accounts.htpasswd([pull, push], text) == text
    changed = Credential(push.user, "another")
    rewritten = accounts.parse(accounts.htpasswd([pull, changed], text))
    assert rewritten[pull.user] == parsed[pull.user]
    assert rewritten[push.user] != parsed[push.user]
    assert bcrypt.checkpw(b"another", rewritten[push.user].encode())
