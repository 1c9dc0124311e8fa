"""Open Inference Protocol over gRPC: Podium's gateway against MLServer's own gRPC port.

One MLServer (Podium's skops runtime, the tiny iris model) and one gateway (SQLite store, one
key, metering on, gRPC on its own port, no TLS) on 127.0.0.1; tritonclient.grpc calls
ModelInfer on each, at each concurrency, in interleaved rounds (direct, podium, podium-rest,
again) so a slow spell touches all alike. `podium` is the gateway forwarding to MLServer's own
gRPC port, as a stack configures it; `podium-rest` the same model through the gateway's REST
fallback (an engine without gRPC). Counts and time are bounded per cell. Prints req/s, p50 and
p99 per cell and the gateway's ratio to direct.

    .venv/bin/python bench/oip_grpc.py
    .venv/bin/python bench/oip_grpc.py --concurrency 1,8 --requests 200 --json out.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import tritonclient.grpc as triton

import podium
from podium.artifacts import mlserver_venv
from podium.models import make_tiny
from podium.services.gateway.client import StoreAdmin
from podium.services.gateway.keys import KeySpec

# The gateway benchmark's helpers (this folder is on the path when a bench script runs).
from gateway import free_port, start_gateway, wait_http  # noqa: E402  isort: skip

ROWS = np.array([[5.1, 3.5, 1.4, 0.2]], dtype=np.float64)


def start(root: Path, procs: list[subprocess.Popen[bytes]]) -> dict[str, tuple[str, dict[str, str], str]]:
    """MLServer and the gateway, each added to `procs` as it starts; per target, its gRPC
    address, the metadata its calls carry and the model name it answers to."""
    repo = root / "models"
    make_tiny("sklearn", repo / "iris" / "iris.skops")
    (repo / "iris" / "model-settings.json").write_text(json.dumps({
        "name": "iris", "implementation": "podium.services.mlserver_skops.SkopsModel",
        "parameters": {"uri": str(repo / "iris" / "iris.skops"),
                       "extra": {"trusted_types": [], "trusted": False}}}))
    http, grpc = free_port(), free_port()
    (repo / "settings.json").write_text(json.dumps({
        "parallel_workers": 0, "host": "127.0.0.1", "http_port": http, "grpc_port": grpc,
        "metrics_port": free_port(), "load_models_at_startup": True}))
    path = root / "path"
    path.mkdir()
    (path / "podium").symlink_to(Path(podium.__file__).parent, target_is_directory=True)
    log = (root / "mlserver.log").open("ab")
    procs.append(subprocess.Popen([str(mlserver_venv() / "bin" / "mlserver"), "start", str(repo)],
                                  stdout=log, stderr=subprocess.STDOUT, cwd=repo,
                                  env={"PYTHONPATH": str(path), "PATH": "/usr/bin:/bin"}))
    wait_http(f"http://127.0.0.1:{http}/v2/models/iris/ready", procs[0])
    store = f"sqlite:///{root / 'gateway.db'}"
    key = StoreAdmin(store).create_key(KeySpec(name="bench"))["key"]
    config = {
        "store": store,
        "models": {"iris": {"kind": "predictive", "replicas": [f"http://127.0.0.1:{http}"],
                            "grpc_replicas": [f"127.0.0.1:{grpc}"],
                            "max_outstanding_per_replica": 256},
                   "iris-rest": {"kind": "predictive", "served_name": "iris",
                                 "replicas": [f"http://127.0.0.1:{http}"],
                                 "max_outstanding_per_replica": 256}}}
    log_path = root / "gateway.log"

    def spawn() -> subprocess.Popen[bytes]:
        with log_path.open("ab") as log:
            proc = subprocess.Popen([sys.executable, "-m", "podium.services.gateway", "--config",
                                     str(root / "gateway.yaml"), "--log-level", "warning"],
                                    stdout=log, stderr=subprocess.STDOUT)
        procs.append(proc)
        return proc

    _, gateway_grpc = start_gateway(root / "gateway.yaml", config, log_path, spawn, grpc=True)
    auth = {"authorization": f"Bearer {key}"}
    return {"direct": (f"127.0.0.1:{grpc}", {}, "iris"),
                   "podium": (f"127.0.0.1:{gateway_grpc}", auth, "iris"),
                   "podium-rest": (f"127.0.0.1:{gateway_grpc}", auth, "iris-rest")}


def cell(address: str, headers: dict[str, str], model: str, concurrency: int, count: int,
         max_s: float) -> dict[str, Any]:
    """`count` ModelInfer calls over `concurrency` clients, stopping at `max_s` seconds."""
    clients = [triton.InferenceServerClient(address) for _ in range(concurrency)]
    tensor = triton.InferInput("input-0", list(ROWS.shape), "FP64")
    tensor.set_data_from_numpy(ROWS)
    deadline = time.monotonic() + max_s
    latencies: list[float] = []
    errors = 0
    claimed = 0
    lock = threading.Lock()

    def claim() -> bool:
        # Each call takes its slot first, so a cell makes exactly `count` calls in time.
        nonlocal claimed
        with lock:
            if claimed >= count or time.monotonic() >= deadline:
                return False
            claimed += 1
            return True

    def worker(client: triton.InferenceServerClient) -> None:
        nonlocal errors
        while claim():
            started = time.perf_counter()
            try:
                client.infer(model, [tensor], headers=headers)
                latencies.append(time.perf_counter() - started)
            except Exception:
                errors += 1

    began = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(worker, clients))
    elapsed = time.perf_counter() - began
    for client in clients:
        client.close()
    return {"latencies": latencies, "errors": errors, "seconds": elapsed}


def summary(rounds: list[dict[str, Any]]) -> dict[str, float]:
    latencies = sorted(x for r in rounds for x in r["latencies"])
    done = len(latencies)
    q = statistics.quantiles(latencies, n=100) if done > 1 else latencies * 99
    return {"requests": done, "errors": sum(r["errors"] for r in rounds),
            "req_s": done / sum(r["seconds"] for r in rounds),
            "p50_ms": q[49] * 1000 if q else 0.0, "p99_ms": q[98] * 1000 if q else 0.0}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--concurrency", default="1,8")
    parser.add_argument("--requests", type=int, default=300, help="per cell and round")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--max-seconds", type=float, default=20.0, help="per cell and round")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    concurrencies = [int(c) for c in args.concurrency.split(",")]
    with tempfile.TemporaryDirectory(prefix="podium-bench-grpc-") as tmp:
        # Filled as each process starts, so one that started is stopped even when a later one fails.
        procs: list[subprocess.Popen[bytes]] = []
        try:
            targets = start(Path(tmp), procs)
            runs: dict[str, dict[int, list[dict[str, Any]]]] = {
                name: {c: [] for c in concurrencies} for name in targets}
            for _ in range(args.rounds):
                for c in concurrencies:
                    for name, (address, headers, model) in targets.items():
                        runs[name][c].append(cell(address, headers, model, c, args.requests,
                                                  args.max_seconds))
        finally:
            for proc in procs:
                proc.terminate()
            for proc in procs:
                proc.wait(15)
    figures = {name: {str(c): summary(r) for c, r in by_c.items()} for name, by_c in runs.items()}
    for c in concurrencies:
        direct = figures["direct"][str(c)]
        line = (f"concurrency {c:>3}: direct {direct['req_s']:7.1f} req/s p50 {direct['p50_ms']:6.2f}"
                f" ms p99 {direct['p99_ms']:6.2f} ms")
        for name in ("podium", "podium-rest"):
            gateway = figures[name][str(c)]
            line += (f" | {name} {gateway['req_s']:7.1f} req/s p50 {gateway['p50_ms']:6.2f} ms p99"
                     f" {gateway['p99_ms']:6.2f} ms ({gateway['req_s'] / direct['req_s']:.2f}x direct)")
        print(line)
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
