"""The overview's rates and percentiles from a real Prometheus scraping a real gateway, as on a
stack with monitoring."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest

from podium.monitoring.query import PrometheusClient
from podium.monitoring.scrape import render_prometheus_config
from podium.monitoring.targets import ScrapeTarget
from tests.fixtures_console import ConsoleClient
from tests.fixtures_engines import (
    EngineServer,
    engine_dir,
    llama_server,
    llama_server_bin,
    tiny_gguf,
)
from tests.fixtures_gateway import GatewayFactory, free_port, http, models_for, wait_http
from tests.fixtures_monitoring import PROMETHEUS

__all__ = ["engine_dir", "llama_server", "llama_server_bin", "tiny_gguf"]

pytestmark = pytest.mark.engines
# Fires as soon as Prometheus has scraped node n2 and found it down.
RULES = """groups:
  - name: console
    rules:
      - alert: ConsoleProbe
        expr: up{job="node"} == 0
        labels: {severity: warning}
"""
STREAM = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4,
          "stream": True}


def test_the_overview_reads_rates_and_p95_from_the_stacks_prometheus(
        llama_server: EngineServer, tmp_path: Path) -> None:
    assert Path(PROMETHEUS).exists(), "prometheus is missing: apt-get install prometheus"
    port, root = free_port(), tmp_path
    url = f"http://127.0.0.1:{port}"
    factory = GatewayFactory(root)
    prometheus = None
    try:
        gw = factory.start(models=models_for(llama_server.url, llama_server.model),
                           console={"sources": ["127.0.0.1/32"], "prometheus_url": url})
        rules = root / "rules.yml"
        rules.write_text(RULES)
        config = root / "prometheus.yml"
        # Node n2's exporter is a port where nothing listens: a node down.
        config.write_text(render_prometheus_config(
            [ScrapeTarget("gateway", "n1", f"127.0.0.1:{gw.metrics_port}"),
             ScrapeTarget("node", "n2", f"127.0.0.1:{free_port()}")],
            scrape_interval="1s", evaluation_interval="1s", rule_files=[str(rules)]))
        with (root / "prometheus.log").open("wb") as log:
            prometheus = subprocess.Popen(
                [PROMETHEUS, f"--config.file={config}", f"--storage.tsdb.path={root / 'tsdb'}",
                 f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"],
                stdout=log, stderr=subprocess.STDOUT)
        wait_http(f"{url}/-/ready")
        key = gw.new_key("prom-key")
        client = PrometheusClient(url)
        deadline = time.monotonic() + 60
        # Bounded: a streamed request every 0.3 s until Prometheus has a rate and a p95.
        while True:
            assert http("POST", gw.url + "/v1/chat/completions", key, STREAM)[0] == 200
            rates = client.query('sum by (model) (rate(podium_gateway_requests_total[1m]))')
            if any(s.labels.get("model") == "tiny" and s.value > 0 for s in rates) and \
                    client.query('ALERTS{alertstate="firing"}'):
                break
            assert time.monotonic() < deadline, "Prometheus never saw the gateway's requests"
            time.sleep(0.3)
        operator = ConsoleClient(gw.port)
        assert operator.login(gw.admin_token).status == 303
        data = json.loads(operator.call("GET", "/console/api/overview").body)
        assert data["source"].startswith(f"Prometheus at {url}: every gateway"), data["source"]
        tiny = next(m for m in data["models"] if m["model"] == "tiny")
        assert tiny["requests_per_s"] > 0 and tiny["ttft_p95_s"] is not None, tiny
        assert tiny["tpot_p95_s"] is not None, tiny
        assert data["nodes"] == [{"node": "n2", "up": False}]
        assert {"alert": "ConsoleProbe", "severity": "warning", "where": "n2"} in data["alerts"]
        page = operator.call("GET", "/console/").body
        assert "n2 down" in page and "ConsoleProbe" in page
    finally:
        if prometheus is not None:
            prometheus.terminate()
            prometheus.wait(15)
        factory.stop_all()
