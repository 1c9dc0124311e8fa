"""Real gateway processes and a throwaway PostgreSQL server for the gateway tests."""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from podium.models.tiny_gguf import served_name
from podium.services.gateway.client import AdminApi
from podium.services.gateway.keys import KeySpec
from tests.fixtures_engines import EngineServer, _start, stop, wait_ready

PG_BIN = Path("/usr/lib/postgresql/15/bin")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def free_port_pair() -> int:
    """A port free on 127.0.0.1 whose successor is free too (a gateway's default metrics port)."""
    for _ in range(100):
        port = free_port()
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port + 1))
            except OSError:
                continue
        return port
    raise RuntimeError("no two neighbouring ports are free on 127.0.0.1")


def wait_http(url: str, timeout: float = 30.0, proc: subprocess.Popen[bytes] | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process for {url} exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                if resp.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.1)
    raise TimeoutError(f"{url} did not answer 200 within {timeout} s")


@dataclass
class PostgresServer:
    """A PostgreSQL cluster in a temporary directory, trusting local connections."""

    port: int
    root: Path
    _dbs: int = 0

    def new_database(self) -> str:
        self._dbs += 1
        name = f"gw{self._dbs}_{secrets.token_hex(3)}"
        subprocess.run(
            ["runuser", "-u", "postgres", "--", str(PG_BIN / "createdb"), "-h", "127.0.0.1",
             "-p", str(self.port), "-U", "postgres", name],
            check=True, capture_output=True,
        )
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{name}"

    def _ctl(self, *args: str) -> None:
        subprocess.run(["runuser", "-u", "postgres", "--", str(PG_BIN / "pg_ctl"), "-D",
                        str(self.root / "data"), *args], check=True, capture_output=True)

    def start(self) -> None:
        opts = (f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off"
                " -c max_connections=200")
        self._ctl("-l", str(self.root / "log"), "-o", opts, "-w", "start")

    def stop(self) -> None:
        """Stop the server now (fast shutdown: connected clients are cut off)."""
        self._ctl("-m", "fast", "-w", "stop")


def run_postgres() -> PostgresServer:
    """A new PostgreSQL cluster in its own temporary directory, started."""
    root = Path(tempfile.mkdtemp(prefix="podium-pg-"))
    shutil.chown(root, "postgres", "postgres")
    subprocess.run(
        ["runuser", "-u", "postgres", "--", str(PG_BIN / "initdb"), "-D", str(root / "data"),
         "--auth", "trust", "-U", "postgres", "--no-sync"],
        check=True, capture_output=True,
    )
    server = PostgresServer(free_port(), root)
    server.start()
    return server


def remove_postgres(server: PostgresServer) -> None:
    with contextlib.suppress(subprocess.CalledProcessError):
        server._ctl("-m", "immediate", "stop")
    shutil.rmtree(server.root, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    server = run_postgres()
    try:
        yield server
    finally:
        remove_postgres(server)


@pytest.fixture
def postgres_url(postgres_server: PostgresServer) -> str:
    """A fresh, empty database on the session's PostgreSQL server."""
    return postgres_server.new_database()


@dataclass
class GatewayProcess:
    """`python -m podium.services.gateway --config FILE` on 127.0.0.1, with its admin token."""

    config_path: Path
    port: int
    admin_token: str
    log_path: Path
    store: str
    metrics_port: int = 0
    proc: subprocess.Popen[bytes] | None = None
    _log: Any = field(default=None, repr=False)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def metrics_url(self) -> str:
        """The metrics listener's /metrics (not served on the API's port)."""
        return f"http://127.0.0.1:{self.metrics_port}/metrics"

    @property
    def admin(self) -> AdminApi:
        return AdminApi(self.url, self.admin_token)

    def new_key(self, name: str, models: tuple[str, ...] = ("*",), **limits: Any) -> str:
        """Create a key through the admin API and return its secret."""
        created = self.admin.create_key(KeySpec(name=name, models=models, **limits))
        return str(created["key"])

    def start(self) -> GatewayProcess:
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "podium.services.gateway", "--config", str(self.config_path),
             "--log-level", "warning"],
            stdout=self._log, stderr=subprocess.STDOUT,
        )
        wait_http(self.url + "/v2/health/live", proc=self.proc)
        return self

    def kill(self) -> None:
        """SIGKILL: no shutdown, no flush, as a crash would."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.kill()
        if self._log is not None:
            self._log.close()
            self._log = None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


class GatewayFactory:
    """Starts gateways with a config written from keyword settings; stops them all at the end.

    Example: gw = gateways.start(models={"tiny": {"replicas": [llama.url]}})
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        self.started: list[GatewayProcess] = []

    def config(self, *, models: dict[str, Any], store: str | None = None, port: int | None = None,
               **settings: Any) -> GatewayProcess:
        n = len(self.started) + 1
        # metrics_listen=None leaves the gateway to its default, the port after the API's.
        metrics = settings.pop("metrics_listen", {"host": "127.0.0.1", "port": free_port()})
        port = port or (free_port() if metrics else free_port_pair())
        token = "pdm-admin-" + secrets.token_urlsafe(16)
        token_file = self.root / f"admin-{n}.token"
        token_file.write_text(token + "\n")
        os.chmod(token_file, 0o600)
        store = store or f"sqlite:///{self.root / 'gateway.db'}"
        metrics_port = metrics["port"] if metrics else port + 1
        document = {
            "listen": {"host": "127.0.0.1", "port": port},
            **({"metrics_listen": metrics} if metrics else {}),
            "store": store,
            "admin_token_file": str(token_file),
            "models": models,
            "health": {"interval_s": 0.5, "timeout_s": 1.0, "eject_after": 2},
            **settings,
        }
        path = self.root / f"gateway-{n}.yaml"
        path.write_text(yaml.safe_dump(document))
        gw = GatewayProcess(path, port, token, self.root / f"gateway-{n}.log", store, metrics_port)
        self.started.append(gw)
        return gw

    def start(self, **kw: Any) -> GatewayProcess:
        return self.config(**kw).start()

    def stop_all(self) -> None:
        for gw in self.started:
            with contextlib.suppress(Exception):
                gw.stop()


@pytest.fixture
def gateways(tmp_path: Path) -> Iterator[GatewayFactory]:
    factory = GatewayFactory(tmp_path)
    try:
        yield factory
    finally:
        factory.stop_all()


@pytest.fixture
def postgres_pair(llama_server: EngineServer, postgres_server: PostgresServer,
                  tmp_path: Path) -> Iterator[list[GatewayProcess]]:
    """Two gateways on one new PostgreSQL database, in front of the test llama-server."""
    factory = GatewayFactory(tmp_path)
    store = postgres_server.new_database()
    models = models_for(llama_server.url, llama_server.model)
    try:
        yield [factory.start(models=models, store=store) for _ in range(2)]
    finally:
        factory.stop_all()


def models_for(llama_url: str, llama_model: str, mlserver_url: str | None = None,
               mlserver_model: str = "iris", **tiny: Any) -> dict[str, Any]:
    """Gateway `models:` for the test engines: 'tiny' and 'tiny-b' on llama-server, 'iris'."""
    models: dict[str, Any] = {
        "tiny": {"kind": "llm", "served_name": llama_model, "replicas": [llama_url],
                 "price": {"prompt_per_1k": 0.5, "completion_per_1k": 1.5}, **tiny},
        "tiny-b": {"kind": "llm", "served_name": llama_model, "replicas": [llama_url]},
    }
    if mlserver_url:
        models["iris"] = {"kind": "predictive", "served_name": mlserver_model,
                          "replicas": [mlserver_url]}
    return models


def usage_rows(store_url: str, key_name: str | None = None) -> list[dict[str, Any]]:
    """The gateway's raw usage records, read straight from its store."""
    from podium.services.gateway.store import Store
    from podium.services.gateway.usage import records_op

    store = Store(store_url)
    try:
        rows = store.run_sync(records_op(None, None))
    finally:
        store.engine.dispose()
    return [r for r in rows if key_name is None or r["key_name"] == key_name]


def engine_counters(url: str) -> dict[str, float]:
    """llama-server's own token counters from its /metrics."""
    with urllib.request.urlopen(url + "/metrics", timeout=10) as resp:
        text = resp.read().decode()
    found = {}
    for line in text.splitlines():
        if line.startswith("llamacpp:") and not line.startswith("#"):
            name, _, value = line.partition(" ")
            found[name.removeprefix("llamacpp:")] = float(value)
    return found


@dataclass
class LlamaReplicas:
    """Extra llama-server processes on the tiny GGUF, for tests that kill or compare replicas."""

    binary: Path
    model_file: Path
    root: Path
    started: list[Any] = field(default_factory=list)

    def start(self, *extra: str, port: int | None = None, ctx: int = 2048, slots: int = 4) -> Any:
        n = len(self.started) + 1
        log = self.root / f"llama-{n}.log"
        port = port or free_port()
        proc = _start([str(self.binary), "--model", str(self.model_file), "--alias",
                       served_name("tiny"), "--host", "127.0.0.1", "--port", str(port),
                       "--ctx-size", str(ctx), "--parallel", str(slots), "--threads", "1",
                       "--metrics",
                       "--no-webui", *extra], log)
        server = EngineServer(url=f"http://127.0.0.1:{port}", model=served_name("tiny"),
                              process=proc, log=log, ready_s=0.0)
        self.started.append(server)
        server.ready_s = wait_ready(proc, server.url + "/health", log, 90)
        return server

    def kill(self, server: Any) -> None:
        """SIGKILL the replica's process group, as a crash would."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(server.process.pid, signal.SIGKILL)
        server.process.wait(10)

    def stop_all(self) -> None:
        for server in self.started:
            with contextlib.suppress(Exception):
                stop(server.process)


@pytest.fixture
def llama_replicas(llama_server_bin: Path, tiny_gguf: Path, tmp_path: Path
                   ) -> Iterator[LlamaReplicas]:
    replicas = LlamaReplicas(llama_server_bin, tiny_gguf, tmp_path)
    try:
        yield replicas
    finally:
        replicas.stop_all()


@dataclass
class CliRun:
    exit_code: int
    stdout: str
    error: str


def podium(*args: str) -> CliRun:
    """Run `podium keys|usage|gateway|audit ...` in-process as podium.cli.main would."""
    import typer

    from podium.cli import audit as audit_cli
    from podium.cli import gateway as gateway_cli
    from podium.cli import keys as keys_cli
    from podium.cli import usage as usage_cli

    app = typer.Typer()
    for module in (audit_cli, gateway_cli, keys_cli, usage_cli):
        module.register(app)
    return invoke(app, *args)


def invoke(app: Any, *args: str) -> CliRun:
    """Run a typer app in-process as podium.cli.main would: Podium's errors become exit codes."""
    from typer.testing import CliRunner

    from podium.errors import PodiumError

    result = CliRunner().invoke(app, list(args))
    if isinstance(result.exception, PodiumError):
        return CliRun(result.exception.exit_code, result.stdout, str(result.exception))
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return CliRun(result.exit_code, result.stdout, result.stderr)


def http(method: str, url: str, key: str | None = None, body: Any = None,
         timeout: float = 60) -> tuple[int, dict[str, str], bytes]:
    """One plain HTTP exchange: (status, headers, body), errors included."""
    import json as _json
    import urllib.error

    headers = {"Content-Type": "application/json"}
    if key:
        headers["Authorization"] = f"Bearer {key}"
    data = None if body is None else _json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as resp:
            return resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()
