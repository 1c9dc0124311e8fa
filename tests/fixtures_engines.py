"""Real engines on 127.0.0.1 for tests: llama-server with a tiny GGUF, MLServer with skops.

Session-scoped and shared: the gateway tests reuse `llama_server` and `mlserver`.
The first run builds or adopts the llama-server wheel and creates the cached
venvs (see podium.artifacts); later runs start both engines in a few seconds.
llama-server closes the connection after each streamed response, so clients
must not reuse that socket.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

import podium
from podium import engine_files
from podium.artifacts import llamacpp_server, mlserver_venv
from podium.models import make_tiny
from podium.models.tiny_gguf import served_name

LLAMACPP_VERSION = "11434.0.0"
SKOPS_RUNTIME = "podium.services.mlserver_skops.SkopsModel"
SKLEARN_MODEL = "iris"
START_TIMEOUT_S = 90.0
# Nothing started here may reach out: the engines' own quiet environment, as their units and
# pods carry it, and no proxy.
QUIET_ENV = {**engine_files.QUIET_ENV, "NO_PROXY": "*", "no_proxy": "*"}


@dataclass
class EngineServer:
    """A running engine: where it answers, the model it serves, and its process."""

    url: str
    model: str
    process: subprocess.Popen[bytes]
    log: Path
    ready_s: float
    repository: Path | None = None

    def log_tail(self, n: int = 30) -> str:
        lines = self.log.read_text(errors="replace").splitlines()
        return "\n".join(lines[-n:])


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now (the engine binds it a moment later)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_ready(proc: subprocess.Popen[bytes], url: str, log: Path, timeout: float) -> float:
    """Poll `url` until it answers 200; fail with the engine's log if it exits or times out."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if proc.poll() is not None:
            raise RuntimeError(f"engine exited with {proc.returncode}:\n{_tail(log)}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url, timeout=2).status_code == 200:
                return time.monotonic() - start
        time.sleep(0.05)
    raise RuntimeError(f"{url} not ready after {timeout:.0f} s:\n{_tail(log)}")


def stop(proc: subprocess.Popen[Any]) -> None:
    """Stop an engine started in its own session: SIGTERM its group, then SIGKILL."""
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=15)


def _tail(log: Path, n: int = 30) -> str:
    return "\n".join(log.read_text(errors="replace").splitlines()[-n:])


def _start(cmd: list[str], log: Path, *, env: dict[str, str] | None = None,
           cwd: Path | None = None) -> subprocess.Popen[bytes]:
    with log.open("ab") as sink:
        return subprocess.Popen(cmd, stdout=sink, stderr=subprocess.STDOUT, cwd=cwd,
                                env={**os.environ, **QUIET_ENV, **(env or {})},
                                start_new_session=True)


@pytest.fixture(scope="session")
def engine_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("engines")


@pytest.fixture(scope="session")
def tiny_gguf(engine_dir: Path) -> Path:
    """The tiny llama GGUF (seed 0), a few MB."""
    return make_tiny("gguf", engine_dir / "tiny.gguf")


@pytest.fixture(scope="session")
def tiny_sklearn(engine_dir: Path) -> Path:
    """The iris skops model (seed 0); its sidecar iris.json holds an example and its prediction."""
    return make_tiny("sklearn", engine_dir / "models" / f"{SKLEARN_MODEL}.skops")


@pytest.fixture(scope="session")
def llama_server_bin() -> Path:
    return llamacpp_server(LLAMACPP_VERSION)


@pytest.fixture(scope="session")
def llama_server(llama_server_bin: Path, tiny_gguf: Path, engine_dir: Path
                 ) -> Iterator[EngineServer]:
    """llama-server with the tiny GGUF on 127.0.0.1: 4 slots of 512 tokens, /metrics on."""
    model = served_name("tiny")
    log = engine_dir / "llama-server.log"
    for _attempt in range(3):  # another process may take the free port first
        port = free_port()
        proc = _start([str(llama_server_bin), "--model", str(tiny_gguf), "--alias", model,
                       "--host", "127.0.0.1", "--port", str(port), "--ctx-size", "2048",
                       "--parallel", "4", "--threads", "2", "--metrics", "--no-webui"], log)
        url = f"http://127.0.0.1:{port}"
        try:
            ready_s = wait_ready(proc, f"{url}/health", log, START_TIMEOUT_S)
        except RuntimeError:
            stop(proc)
            if "bind" in _tail(log).lower():
                continue
            raise
        server = EngineServer(url=url, model=model, process=proc, log=log, ready_s=ready_s)
        try:
            # The first generation is ~20x slower (threads, graph allocation); pay it here
            # so tests that time requests see the steady state.
            httpx.post(f"{url}/v1/completions", timeout=60,
                       json={"model": model, "prompt": "Hello", "max_tokens": 4})
            yield server
        finally:
            stop(proc)
        return
    raise RuntimeError(f"llama-server found no free port:\n{_tail(log)}")


def mlserver_model_settings(name: str, uri: Path, *, trusted_types: list[str] | None = None,
                            trusted: bool = False) -> dict[str, object]:
    """model-settings.json for Podium's skops runtime."""
    return {
        "name": name,
        "implementation": SKOPS_RUNTIME,
        "parameters": {"uri": str(uri),
                       "extra": {"trusted_types": trusted_types or [], "trusted": trusted}},
    }


def add_mlserver_model(repository: Path, settings: dict[str, object]) -> Path:
    """Write a model folder into a running MLServer's repository (then POST its /load)."""
    folder = repository / str(settings["name"])
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "model-settings.json").write_text(json.dumps(settings, indent=2))
    return folder


@pytest.fixture(scope="session")
def mlserver(tiny_sklearn: Path, engine_dir: Path) -> Iterator[EngineServer]:
    """MLServer 1.7.1 serving the iris skops model through Podium's runtime on 127.0.0.1."""
    env_dir = mlserver_venv()
    # Only the podium package goes on MLServer's path, not Podium's venv, whose pins conflict.
    pythonpath = engine_dir / "mlserver-path"
    pythonpath.mkdir(exist_ok=True)
    link = pythonpath / "podium"
    if not link.exists():
        link.symlink_to(Path(podium.__file__).parent, target_is_directory=True)
    repository = engine_dir / "mlserver-models"
    add_mlserver_model(repository, mlserver_model_settings(SKLEARN_MODEL, tiny_sklearn))
    log = engine_dir / "mlserver.log"
    for _attempt in range(3):
        http, grpc, metrics = free_port(), free_port(), free_port()
        (repository / "settings.json").write_text(json.dumps({
            # MLServer's parallel workers crash under uvloop >= 0.22; serve in-process.
            "parallel_workers": 0,
            "host": "127.0.0.1", "http_port": http, "grpc_port": grpc, "metrics_port": metrics,
            "debug": False, "load_models_at_startup": True,
        }))
        proc = _start([str(env_dir / "bin" / "mlserver"), "start", str(repository)], log,
                      env={"PYTHONPATH": str(pythonpath)}, cwd=repository)
        url = f"http://127.0.0.1:{http}"
        try:
            ready_s = wait_ready(proc, f"{url}/v2/models/{SKLEARN_MODEL}/ready", log,
                                 START_TIMEOUT_S)
        except RuntimeError:
            stop(proc)
            if "address already in use" in _tail(log).lower():
                continue
            raise
        server = EngineServer(url=url, model=SKLEARN_MODEL, process=proc, log=log,
                              ready_s=ready_s, repository=repository)
        try:
            yield server
        finally:
            stop(proc)
        return
    raise RuntimeError(f"MLServer found no free ports:\n{_tail(log)}")
