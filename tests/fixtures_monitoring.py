"""Real Prometheus, node exporter and metrics endpoints on 127.0.0.1 for the monitoring tests."""

from __future__ import annotations

import shutil
import socket
import subprocess
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from podium.monitoring.rules import AlertThresholds, render_alert_rules
from podium.monitoring.scrape import render_prometheus_config
from podium.monitoring.targets import (
    EngineEndpoint,
    GatewayEndpoint,
    ScrapeTarget,
    targets_from_components,
)

PROMETHEUS = shutil.which("prometheus") or "/usr/bin/prometheus"
NODE_EXPORTER = shutil.which("prometheus-node-exporter") or "/usr/bin/prometheus-node-exporter"
LOCALHOST = "127.0.0.1"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind((LOCALHOST, 0))
        return int(s.getsockname()[1])


def wait_http(url: str, deadline_s: float = 30.0) -> None:
    """Wait until `url` answers 200, or fail the test naming it."""
    end = time.monotonic() + deadline_s
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        if time.monotonic() > end:
            pytest.fail(f"{url} did not answer 200 within {deadline_s}s")
        time.sleep(0.2)


@dataclass
class FakeAppliance:
    """What the fixture started: Prometheus' URL and the ports of everything it scrapes."""

    url: str
    workdir: Path
    dead_port: int
    log: Path
    ports: dict[str, int] = field(default_factory=dict)


def _gateway_registry() -> tuple[CollectorRegistry, Counter, Histogram, Counter]:
    reg = CollectorRegistry()
    requests = Counter(
        "podium_gateway_requests", "Requests.", ["model", "key", "status"], registry=reg
    )
    ttft = Histogram(
        "podium_gateway_ttft_seconds",
        "Time to first token.",
        ["model"],
        buckets=(0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
        registry=reg,
    )
    tokens = Counter("podium_gateway_tokens", "Tokens.", ["model", "key", "kind"], registry=reg)
    for name in ("tpot", "itl", "request"):
        Histogram(f"podium_gateway_{name}_seconds", name, ["model"], registry=reg)
    Counter("podium_gateway_cost", "Cost.", ["key", "model", "team"], registry=reg)
    for name in ("budget", "budget_spent"):
        Gauge(f"podium_gateway_{name}", name, ["owner", "name", "period"],
              registry=reg).labels("team", "research", "month").set(1.0)
    Gauge("podium_gateway_in_flight", "In flight.", ["model"], registry=reg).labels("tiny-llama")
    healthy = Gauge("podium_gateway_upstream_healthy", "Up.", ["model", "replica"], registry=reg)
    healthy.labels("tiny-llama", "0").set(1)
    healthy.labels("tiny-llama", "1").set(0)
    return reg, requests, ttft, tokens


def _vllm_registry() -> tuple[CollectorRegistry, Counter, Histogram]:
    reg = CollectorRegistry()
    success = Counter("vllm:request_success", "Finished.", ["model_name"], registry=reg)
    ttft = Histogram(
        "vllm:time_to_first_token_seconds",
        "TTFT.",
        ["model_name"],
        buckets=(0.01, 0.05, 0.1, 0.5),
        registry=reg,
    )
    return reg, success, ttft


@pytest.fixture(scope="session")
def fake_appliance(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FakeAppliance]:
    """Prometheus scraping a real node exporter, a gateway-like and engine-like endpoint,
    itself, and two addresses where nothing listens (a dead node and a dead replica)."""
    if not Path(PROMETHEUS).exists() or not Path(NODE_EXPORTER).exists():
        pytest.skip("prometheus is not installed"
                    " (apt-get install prometheus prometheus-node-exporter)")
    workdir = tmp_path_factory.mktemp("prometheus")
    ports = {name: free_port() for name in ("prometheus", "node", "gateway", "llama", "vllm")}
    dead_port = free_port()
    procs: list[subprocess.Popen[bytes]] = []
    servers = []
    stop = threading.Event()
    log = workdir / "prometheus.log"
    try:
        procs.append(
            subprocess.Popen(
                [
                    NODE_EXPORTER,
                    f"--web.listen-address={LOCALHOST}:{ports['node']}",
                    "--collector.disable-defaults",
                    *(f"--collector.{c}" for c in ("cpu", "meminfo", "filesystem", "loadavg")),
                    "--collector.netdev",
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        )
        gw_reg, requests, ttft, tokens = _gateway_registry()
        llama_reg = CollectorRegistry()
        Gauge("llamacpp:requests_deferred", "Deferred.", registry=llama_reg).set(0)
        vllm_reg, vllm_success, vllm_ttft = _vllm_registry()
        Gauge("vllm:num_requests_waiting", "Waiting.", ["model_name"], registry=vllm_reg)
        for name, reg in (("gateway", gw_reg), ("llama", llama_reg), ("vllm", vllm_reg)):
            servers.append(start_http_server(ports[name], addr=LOCALHOST, registry=reg)[0])

        ip = LOCALHOST
        targets = targets_from_components(
            {"n1": ip},
            engines=[
                EngineEndpoint(
                    "engine-llamacpp", "n1", ip, ports["llama"], "tiny-llama-cpp", "tiny-llama", "0"
                ),
                EngineEndpoint(
                    "engine-llamacpp", "n2", ip, dead_port, "tiny-llama-cpp", "tiny-llama", "1"
                ),
                EngineEndpoint(
                    "engine-vllm", "n1", ip, ports["vllm"], "tiny-vllm", "tiny-vllm", "0"
                ),
            ],
            gateways=[GatewayEndpoint("n1", ip, ports["gateway"], "0")],
            prometheus=("n1", ip),
            prometheus_port=ports["prometheus"],
        )
        # The node exporter listens on a free port, not 9100; a second node is dead.
        targets = [
            ScrapeTarget("node", "n1", f"{ip}:{ports['node']}") if t.job == "node" else t
            for t in targets
        ] + [ScrapeTarget("node", "n2", f"{ip}:{dead_port}")]
        rules = workdir / "podium-alerts.yml"
        rules.write_text(render_alert_rules(AlertThresholds().with_for("1s")))
        config = workdir / "prometheus.yml"
        config.write_text(
            render_prometheus_config(
                targets, scrape_interval="1s", evaluation_interval="1s", rule_files=[str(rules)]
            )
        )
        with log.open("wb") as out:
            procs.append(
                subprocess.Popen(
                    [
                        PROMETHEUS,
                        f"--config.file={config}",
                        f"--storage.tsdb.path={workdir / 'data'}",
                        f"--web.listen-address={LOCALHOST}:{ports['prometheus']}",
                        "--log.level=warn",
                    ],
                    stdout=out,
                    stderr=subprocess.STDOUT,
                )
            )
        url = f"http://{LOCALHOST}:{ports['prometheus']}"
        wait_http(f"{url}/-/ready")

        def traffic() -> None:
            # Bounded: at most 3000 rounds of 0.1 s, and stopped at teardown.
            for _ in range(3000):
                if stop.wait(0.1):
                    return
                requests.labels("tiny-llama", "k1", "200").inc()
                requests.labels("tiny-llama", "k2", "500").inc(0.1)
                ttft.labels("tiny-llama").observe(0.3)
                tokens.labels("tiny-llama", "k1", "prompt").inc(12)
                tokens.labels("tiny-llama", "k1", "completion").inc(30)
                vllm_success.labels("tiny-vllm").inc(2)
                vllm_ttft.labels("tiny-vllm").observe(0.03)

        thread = threading.Thread(target=traffic, daemon=True)
        thread.start()
        yield FakeAppliance(url, workdir, dead_port, log, ports)
        stop.set()
        thread.join(timeout=5)
    finally:
        stop.set()
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        for server in servers:
            server.shutdown()
            server.server_close()
