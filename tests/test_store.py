"""Component store: the gateways' PostgreSQL. Its files as rendered for the hybrid example, and
the same files on a real PostgreSQL: the account made from the stack's secret, opened by the
gateway's own store code with the DSN its role writes (verify-full, password file), and nothing
else let in; the nightly dump script keeps its newest dumps."""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest
import yaml
from roles.store import accounts

from podium.files import files_for
from podium.plan import make_plan
from podium.registry.ca import CaScope, ca_certificate, server_certificate
from podium.stack import load_stack
from podium.stack.model import Stack
from podium.stack.versions import load_versions
from tests.fixtures_gateway import PG_BIN, free_port

REPO = Path(__file__).resolve().parents[1]

ONE_GATEWAY = """\
name: storetest
description: One gateway and its PostgreSQL store on this machine's loopback
nodes:
  - {name: gw1, address: 127.0.0.1}
network: {admin_sources: [127.0.0.0/8]}
gateway: {nodes: [gw1], port: 8443, store: postgresql, store_node: gw1}
"""


def settings_of(stack: Stack, component: str, host: str) -> dict[str, Any]:
    actions = make_plan(stack, load_versions())
    return dict(next(a.settings for a in actions if a.component == component and a.host == host))


def test_hybrid_store_lets_in_its_two_gateways_over_tls_with_scram_only() -> None:
    stack = load_stack(REPO / "stacks" / "hybrid")
    settings = settings_of(stack, "store", "vm-ctrl")
    files = files_for("store", "vm-ctrl", settings)
    rules = [line.split() for line in files["pg_hba.conf"].splitlines() if line and not line.startswith("#")]
    assert rules == [
        ["local", "all", "postgres", "peer"],
        ["hostssl", "podium", "podium", "198.51.100.10/32", "scram-sha-256"],
        ["hostssl", "podium", "podium", "203.0.113.11/32", "scram-sha-256"],
    ]
    conf = files["podium.conf"]
    for line in ("listen_addresses = 'localhost,198.51.100.10'", "ssl = on",
                 "password_encryption = 'scram-sha-256'", "ssl_cert_file = '/etc/podium/store/tls.crt'"):
        assert line in conf, line
    assert "OnCalendar=*-*-* 03:00:00" in files["podium-store-dump.timer"]
    assert "tail -n +8" in files["podium-store-dump"]
    # The firewall opens 5432 on the store node to the gateway nodes alone.
    base = settings_of(stack, "base", "vm-ctrl")
    opening = next(o for o in base["openings"] if o["what"] == "postgresql")
    assert opening["port"] == 5432 and sorted(opening["sources"]) == ["198.51.100.10", "203.0.113.11"]


def test_hybrid_gateways_reach_the_store_with_verify_full_and_a_password_file() -> None:
    stack = load_stack(REPO / "stacks" / "hybrid")
    for host in ("vm-ctrl", "gpu1"):
        config = yaml.safe_load(files_for("gateway", host, settings_of(stack, "gateway", host))["gateway.yaml"])
        assert config["store"] == (
            "postgresql+psycopg://podium@198.51.100.10:5432/podium?sslmode=verify-full"
            "&sslrootcert=/etc/podium/gateway/ca.crt&passfile=/etc/podium/gateway/store.pgpass"
        )
    order = [a.component for a in make_plan(stack, load_versions())]
    assert order.index("store") < order.index("gateway")


def test_scram_verifier_matches_rfc_7677() -> None:
    salt = base64.b64decode("W22ZaJ0SNY7soEsUEjb6gQ==")
    verifier = accounts.scram_verifier("pencil", salt)
    head, keys = verifier.rsplit("$", 1)
    assert head == "SCRAM-SHA-256$4096:W22ZaJ0SNY7soEsUEjb6gQ=="
    server_key = base64.b64decode(keys.split(":")[1])
    nonce = "rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0"
    auth = f"n=user,r=rOprNGfwEbeRWgbNEkqO,r={nonce},s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096,c=biws,r={nonce}"
    signature = hmac.new(server_key, auth.encode(), hashlib.sha256).digest()
    assert base64.b64encode(signature).decode() == "6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="


def test_the_password_file_escapes_what_libpq_reads_as_separators() -> None:
    line = accounts.passfile("10.0.0.1", 5432, "podium", "podium", "a:b\\c")
    assert line == "10.0.0.1:5432:podium:podium:a\\:b\\\\c\n"


@dataclass
class StoreNode:
    """A PostgreSQL cluster set up with the store role's own files, listening on 127.0.0.1."""

    root: Path
    port: int
    stack: Stack
    gateway_config: dict[str, Any]
    gateway_dir: Path

    def psql(self, sql: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["runuser", "-u", "postgres", "--", str(PG_BIN / "psql"), "-XtAq", "-v", "ON_ERROR_STOP=1",
             "-h", str(self.root), "-p", str(self.port), "-d", "postgres", "-f", "-"],
            input=sql, capture_output=True, text=True, timeout=60,
        )

    def dsn(self, **change: str) -> str:
        """The gateway's DSN (libpq keywords) with its node paths under this test's folder."""
        params = {"host": "127.0.0.1", "port": str(self.port), "dbname": "podium", "user": "podium",
                  "sslmode": "verify-full", "sslrootcert": str(self.gateway_dir / "ca.crt"),
                  "passfile": str(self.gateway_dir / "store.pgpass"), "connect_timeout": "5", **change}
        return " ".join(f"{k}={v}" for k, v in params.items())


def _pg_ctl(root: Path, *args: str) -> None:
    subprocess.run(["runuser", "-u", "postgres", "--", str(PG_BIN / "pg_ctl"), "-D", str(root / "data"), *args],
                   check=True, capture_output=True, timeout=120)


@pytest.fixture
def store_node(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[StoreNode]:
    if not (PG_BIN / "initdb").exists():
        pytest.skip("PostgreSQL 15 is not installed (apt-get install postgresql)")
    monkeypatch.setenv("PODIUM_STATE_DIR", str(tmp_path / "state"))
    (tmp_path / "s").mkdir()
    (tmp_path / "s" / "stack.yaml").write_text(ONE_GATEWAY)
    stack = load_stack(tmp_path / "s")
    port = free_port()
    store = {**settings_of(stack, "store", "gw1"), "port": port}
    gateway = {**settings_of(stack, "gateway", "gw1"), "store_port": port}
    root = Path(tempfile.mkdtemp(prefix="podium-store-"))
    shutil.chown(root, "postgres", "postgres")
    try:
        subprocess.run(["runuser", "-u", "postgres", "--", str(PG_BIN / "initdb"), "-D", str(root / "data"),
                        "-U", "postgres", "--no-sync"], check=True, capture_output=True, timeout=120)
        # The role's files, with the node's paths moved under this cluster's folder.
        files = files_for("store", "gw1", store)
        ca_certificate(stack.name, CaScope.of(stack))
        cert, key = server_certificate(stack.name, "store-gw1", ["127.0.0.1"], ["gw1"])
        for source, name in ((cert, "tls.crt"), (key, "tls.key")):
            shutil.copyfile(source, root / name)
            shutil.chown(root / name, "postgres", "postgres")
            os.chmod(root / name, 0o600)
        conf = files["podium.conf"].replace("/etc/podium/store", str(root))
        data = root / "data"
        (data / "podium.conf").write_text(conf)
        with (data / "postgresql.conf").open("a") as out:
            out.write(f"include 'podium.conf'\nunix_socket_directories = '{root}'\nfsync = off\n")
        (data / "pg_hba.conf").write_text(files["pg_hba.conf"])
        _pg_ctl(root, "-l", str(root / "log"), "-w", "start")
        node = StoreNode(root, port, stack, yaml.safe_load(files_for("gateway", "gw1", gateway)["gateway.yaml"]),
                         tmp_path / "gateway")
        made = node.psql(accounts.account_sql(store["database"], store["user"], accounts.stack_verifier(stack.name)))
        assert made.returncode == 0, made.stderr
        # What the gateway role writes beside its config: the stack CA and the password file (0600).
        node.gateway_dir.mkdir()
        shutil.copyfile(ca_certificate(stack.name), node.gateway_dir / "ca.crt")
        pgpass = node.gateway_dir / "store.pgpass"
        pgpass.write_text(accounts.passfile("127.0.0.1", port, "podium", "podium",
                                            (tmp_path / "state" / "storetest" / "secrets" / "store-password")
                                            .read_text().strip()))
        os.chmod(pgpass, 0o600)
        yield node
    finally:
        if (root / "data" / "postmaster.pid").exists():
            _pg_ctl(root, "-m", "immediate", "stop")
        shutil.rmtree(root, ignore_errors=True)


@pytest.mark.timeout(300)
def test_the_gateways_store_opens_only_with_verified_tls_and_its_password(store_node: StoreNode) -> None:
    from podium.services.gateway.store import Store

    # The gateway's own store code, with the URL its role writes (node paths moved here).
    url = store_node.gateway_config["store"].replace("/etc/podium/gateway", str(store_node.gateway_dir))
    assert "sslmode=verify-full" in url and "passfile=" in url and ":" not in url.split("@")[0].split("//")[1]
    store = Store(url)
    try:
        store.create_schema()
    finally:
        store.engine.dispose()
    with psycopg.connect(store_node.dsn()) as conn:
        assert conn.execute("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()").fetchone() == (True,)
        assert conn.execute("SELECT current_user").fetchone() == ("podium",)
    # Without TLS no pg_hba line matches; a wrong password fails scram; a name the
    # certificate does not carry fails verify-full before any password is sent.
    for change, said in (
        ({"sslmode": "disable"}, "no pg_hba.conf entry"),
        ({"passfile": "/dev/null", "password": "not-the-secret"}, "password authentication failed"),
        ({"host": "localhost"}, "does not match host name"),
        ({"user": "postgres", "dbname": "postgres"}, "no pg_hba.conf entry"),
    ):
        with pytest.raises(psycopg.OperationalError, match=said):
            psycopg.connect(store_node.dsn(**change))
    # Re-running the account's SQL (a reapply, or a changed password) keeps the database.
    again = store_node.psql(accounts.account_sql("podium", "podium", accounts.stack_verifier("storetest")))
    assert again.returncode == 0, again.stderr
    with psycopg.connect(store_node.dsn()) as conn:
        assert conn.execute("SELECT count(*) FROM pg_tables WHERE tablename = 'gateway_usage'").fetchone() == (1,)


@pytest.mark.timeout(300)
def test_the_dump_script_leaves_the_newest_dumps_pg_restore_reads(store_node: StoreNode, tmp_path: Path) -> None:
    from podium.services.gateway.store import Store

    url = store_node.gateway_config["store"].replace("/etc/podium/gateway", str(store_node.gateway_dir))
    store = Store(url)
    try:
        store.create_schema()
    finally:
        store.engine.dispose()
    dumps = store_node.root / "dumps"
    dumps.mkdir()
    shutil.chown(dumps, "postgres", "postgres")
    settings = {**settings_of(store_node.stack, "store", "gw1"), "dump": {"calendar": "daily", "keep": 2}}
    script = store_node.root / "podium-store-dump"
    script.write_text(files_for("store", "gw1", settings)["podium-store-dump"].replace(
        "/var/backups/podium-store", str(dumps)))
    script.chmod(0o755)
    env = {**os.environ, "PGHOST": str(store_node.root), "PGPORT": str(store_node.port)}
    for _ in range(3):
        done = subprocess.run(["runuser", "-u", "postgres", "--", str(script)], env=env, capture_output=True,
                              text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        time.sleep(1.1)  # dumps are named by the second
    kept = sorted(dumps.iterdir())
    assert len(kept) == 2 and all(p.name.startswith("podium-") and p.suffix == ".dump" for p in kept), kept
    listed = subprocess.run([str(PG_BIN / "pg_restore"), "--list", str(kept[-1])], capture_output=True, text=True)
    assert listed.returncode == 0 and "TABLE public gateway_usage" in listed.stdout, listed.stdout[-500:]
