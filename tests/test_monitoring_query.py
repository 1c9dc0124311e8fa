"""`podium status` data and command against a real Prometheus scraping real endpoints."""

from __future__ import annotations

import json
import time

import pytest
import typer
from rich.console import Console
from typer.testing import CliRunner

from podium.cli import status as status_cli
from podium.errors import InvalidInput, PodiumError
from podium.monitoring.query import ApplianceStatus, PrometheusClient, collect_status
from tests.fixtures_monitoring import FakeAppliance, fake_appliance, free_port  # noqa: F401


def settled_status(url: str) -> ApplianceStatus:
    """Poll until every figure the traffic produces has reached Prometheus (or fail)."""
    client = PrometheusClient(url)
    deadline = time.monotonic() + 60
    while True:
        status = collect_status(client, window="10s")
        engines = {(e.model, e.replica): e for e in status.engines}
        ready = (
            len(status.nodes) == 2
            and len(status.gateways) == 1
            and all(g.qps for g in status.gateways)
            and engines.get(("tiny-vllm", "0")) is not None
            and engines[("tiny-vllm", "0")].qps
            and engines.get(("tiny-llama", "0")) is not None
            and engines[("tiny-llama", "0")].ttft_p95_seconds is not None
            and engines[("tiny-llama", "1")].healthy_at_gateway is not None
        )
        if ready:
            return status
        if time.monotonic() > deadline:
            pytest.fail(f"Prometheus never showed all figures; last status: {status}")
        time.sleep(0.5)


def test_status_reports_up_down_qps_and_ttft(fake_appliance: FakeAppliance) -> None:  # noqa: F811
    status = settled_status(fake_appliance.url)
    assert {(n.node, n.up) for n in status.nodes} == {("n1", True), ("n2", False)}
    engines = {(e.model, e.replica): e for e in status.engines}
    assert set(engines) == {("tiny-llama", "0"), ("tiny-llama", "1"), ("tiny-vllm", "0")}

    llama0, llama1, vllm0 = (
        engines["tiny-llama", "0"],
        engines["tiny-llama", "1"],
        engines["tiny-vllm", "0"],
    )
    assert (llama0.up, llama0.node, llama0.job) == (True, "n1", "engine-llamacpp")
    assert (llama1.up, llama1.node) == (False, "n2")
    assert llama0.healthy_at_gateway is True and llama1.healthy_at_gateway is False
    # llama.cpp has no request counter of its own, so its figures are the model's at the gateway.
    assert llama0.figures_from == "model" and llama0.qps is not None and llama0.qps > 0
    assert llama0.ttft_p95_seconds is not None and 0.25 < llama0.ttft_p95_seconds <= 0.5
    # vLLM's own counter and histogram give per-replica figures.
    assert vllm0.figures_from == "replica" and vllm0.qps is not None and vllm0.qps > 0
    assert vllm0.ttft_p95_seconds is not None and 0.01 < vllm0.ttft_p95_seconds <= 0.05
    assert vllm0.healthy_at_gateway is None

    (gateway,) = status.gateways
    assert (gateway.node, gateway.replica, gateway.up) == ("n1", "0", True)
    assert gateway.qps is not None and gateway.qps > 0
    assert {(o.job, o.up) for o in status.others} == {("prometheus", True)}


def test_status_command_prints_table_and_json(fake_appliance: FakeAppliance) -> None:  # noqa: F811
    settled_status(fake_appliance.url)
    app = typer.Typer()
    status_cli.register(app)
    app.command("noop", hidden=True)(lambda: None)  # a second command keeps `status` a subcommand
    runner = CliRunner()
    result = runner.invoke(app, ["status", "--prometheus", fake_appliance.url, "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert {n["node"]: n["up"] for n in data["nodes"]} == {"n1": True, "n2": False}
    assert data["versions"] == {}

    # Wide enough that rich does not wrap the names this checks.
    result = runner.invoke(
        app,
        ["status", "--prometheus", fake_appliance.url, "--window", "10s"],
        env={"COLUMNS": "200"},
    )
    assert result.exit_code == 0, result.output
    assert "tiny-llama #1" in result.output and "down" in result.output

    console = Console(record=True, width=200)
    shown = status_cli.show_status(
        fake_appliance.url,
        versions={"n1": {"engine-llamacpp": "b4000", "gateway": "0.1.0", "monitoring": "2.42.0"}},
        console=console,
        window="10s",
    )
    text = console.export_text()
    assert "b4000" in text and "0.1.0" in text
    # The prometheus row carries the version of the monitoring component that installed it.
    assert any("prometheus" in line and "2.42.0" in line for line in text.splitlines())
    assert "(model)" in text  # llama.cpp figures are marked as the model's
    assert len(shown.engines) == 3


def test_status_without_prometheus_is_invalid_input() -> None:
    app = typer.Typer()
    status_cli.register(app)
    app.command("noop", hidden=True)(lambda: None)
    result = CliRunner().invoke(app, ["status"])
    assert isinstance(result.exception, InvalidInput)
    assert "pass --prometheus URL" in str(result.exception)


def test_unreachable_or_bad_prometheus_is_one_clear_error() -> None:
    with pytest.raises(PodiumError, match="cannot reach Prometheus at http://127.0.0.1:"):
        PrometheusClient(f"http://127.0.0.1:{free_port()}", timeout=2).query("up")
    with pytest.raises(InvalidInput, match="Prometheus URL '127.0.0.1:9090'"):
        PrometheusClient("127.0.0.1:9090")
    with pytest.raises(InvalidInput, match="window '10'"):
        collect_status(PrometheusClient("http://127.0.0.1:9"), window="10")
