"""A real Prometheus scraping a real vLLM CPU replica and the gateway in front of it: the Models
dashboard's TTFT, TPOT and ITL panels show vLLM's own histograms beside the gateway's."""

from __future__ import annotations

import math
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest

from podium.monitoring.dashboards import load_dashboard, panels, substitute_variables
from podium.monitoring.query import PrometheusClient
from podium.monitoring.scrape import render_prometheus_config
from podium.monitoring.targets import EngineEndpoint, GatewayEndpoint, targets_from_components
from tests.fixtures_engines import EngineServer, engine_dir, stop, tiny_hf, vllm_cpu_python, vllm_server
from tests.fixtures_gateway import GatewayFactory, GatewayProcess, gateways
from tests.fixtures_monitoring import LOCALHOST, PROMETHEUS, free_port, wait_http

__all__ = ["engine_dir", "gateways", "tiny_hf", "vllm_cpu_python", "vllm_server"]

pytestmark = pytest.mark.engines

MODEL = "tiny-vllm"
LATENCY_PANELS = ("Time to first token", "Time per output token", "Inter-token latency")


@pytest.fixture
def scraped(gateways: GatewayFactory, vllm_server: EngineServer, tmp_path: Path
            ) -> Iterator[tuple[GatewayProcess, PrometheusClient]]:
    """The gateway serving MODEL from the vLLM replica, both scraped by a real Prometheus."""
    if not Path(PROMETHEUS).exists():
        pytest.skip("prometheus is not installed (apt-get install prometheus)")
    gw = gateways.start(models={MODEL: {"kind": "llm", "served_name": vllm_server.model,
                                        "replicas": [vllm_server.url]}})
    port = free_port()
    targets = targets_from_components(
        {"n1": LOCALHOST},
        engines=[EngineEndpoint("engine-vllm", "n1", LOCALHOST,
                                int(vllm_server.url.rsplit(":", 1)[1]), "tiny-vllm-cpu", MODEL, "0")],
        gateways=[GatewayEndpoint("n1", LOCALHOST, gw.metrics_port, "0")],
        prometheus=("n1", LOCALHOST), prometheus_port=port,
    )
    config = tmp_path / "prometheus.yml"
    # Every 5 s: a scrape may take as long as its interval, and vLLM's /metrics can take
    # seconds on a busy two-core machine.
    config.write_text(render_prometheus_config(targets, scrape_interval="5s",
                                               evaluation_interval="5s"))
    with (tmp_path / "prometheus.log").open("wb") as log:
        proc = subprocess.Popen(
            [PROMETHEUS, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'data'}",
             f"--web.listen-address={LOCALHOST}:{port}", "--log.level=warn"],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_http(f"http://{LOCALHOST}:{port}/-/ready")
        yield gw, PrometheusClient(f"http://{LOCALHOST}:{port}")
    finally:
        stop(proc)


def test_latency_panels_show_vllms_histograms_beside_the_gateways(
        scraped: tuple[GatewayProcess, PrometheusClient]) -> None:
    gw, prometheus = scraped
    client = openai.OpenAI(base_url=gw.url + "/v1", api_key=gw.new_key("watched"), max_retries=0)
    # Two rounds a few scrapes apart, so every rate over the panels' window has an increase.
    for _round in range(2):
        for n in range(3):
            list(client.chat.completions.create(
                model=MODEL, max_tokens=6 + n, stream=True,
                messages=[{"role": "user", "content": f"Round {n}"}]))
        time.sleep(11)
    board = load_dashboard("podium-models")
    wanted = {p["title"] for p in panels(board) if p.get("title", "").startswith(LATENCY_PANELS)}
    seen: dict[str, set[str]] = {}
    # Prometheus needs a scrape on each side of an increase; a few more seconds at most.
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        seen = shown(prometheus, board)
        if seen == {title: {"gateway", "vLLM"} for title in wanted}:
            break
        time.sleep(1)
    assert len(wanted) == 3 and seen == {t: {"gateway", "vLLM"} for t in wanted}, seen


def shown(prometheus: PrometheusClient, board: dict[str, Any]) -> dict[str, set[str]]:
    """Latency panel title → whose lines (gateway, vLLM) have a finite value for MODEL."""
    seen: dict[str, set[str]] = {}
    for panel in panels(board):
        if not panel.get("title", "").startswith(LATENCY_PANELS):
            continue
        for target in panel["targets"]:
            expr = substitute_variables(target["expr"], {"model": MODEL})
            values = [s.value for s in prometheus.query(expr) if s.labels.get("model") == MODEL]
            if values and all(math.isfinite(v) and v > 0 for v in values):
                source = "vLLM" if "(vLLM)" in target["legendFormat"] else "gateway"
                seen.setdefault(panel["title"], set()).add(source)
    return seen
