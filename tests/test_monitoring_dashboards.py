"""Grafana dashboards: well-formed, provisioned, and every PromQL expression parses."""

from __future__ import annotations

import json
import re
import urllib.request

import pytest
import yaml

from podium.errors import InvalidInput, PodiumError
from podium.monitoring.dashboards import (
    DASHBOARDS,
    DATASOURCE_UID,
    load_dashboard,
    panel_expressions,
    panels,
    render_grafana_provisioning,
    substitute_variables,
)
from podium.monitoring.query import PrometheusClient
from tests.fixtures_monitoring import FakeAppliance, fake_appliance  # noqa: F401

SAMPLE_VALUES = {"model": "tiny-llama", "key": "k1", "node": "n1"}


@pytest.mark.parametrize("name", DASHBOARDS)
def test_dashboard_is_well_formed(name: str) -> None:
    board = load_dashboard(name)
    assert board["uid"] == name
    ids = [p["id"] for p in panels(board)]
    assert len(ids) == len(set(ids)), f"{name}: panel ids repeat"
    defined = {v["name"] for v in board["templating"]["list"]}
    for panel in panels(board):
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, f"{name}: panel {panel['title']!r} is too wide"
        if panel["type"] == "row":
            continue
        assert panel["datasource"]["uid"] == DATASOURCE_UID, panel["title"]
        assert panel["targets"], f"{name}: panel {panel['title']!r} has no query"
    for title, expr in panel_expressions(board):
        used = set(re.findall(r"\$(?!__)(\w+)", expr))
        assert used <= defined, f"{name}: panel {title!r} uses undefined {used - defined}"


def test_the_dashboards_cover_what_operators_look_for() -> None:
    exprs = {
        name: " ".join(e for _, e in panel_expressions(load_dashboard(name))) for name in DASHBOARDS
    }
    for metric in ("node_cpu_seconds_total", "node_filesystem_avail_bytes", "DCGM_FI_DEV_FB_USED"):
        assert metric in exprs["podium-overview"]
    for metric in ("ttft", "tpot", "itl"):
        for q in ("0.5", "0.95", "0.99"):
            assert (
                f"histogram_quantile({q}, sum by (model, le) (rate(podium_gateway_{metric}_"
                in (exprs["podium-models"])
            )
    for metric in ("podium_gateway_tokens_total", "podium_gateway_cost_total", 'status="429"',
                   "podium_gateway_budget_spent", "podium_gateway_budget{", "by (team)"):
        assert metric in exprs["podium-keys"]


def test_variables_are_substituted() -> None:
    expr = 'rate(x{model=~"$model",key="${key}",n="${node:regex}"}[$__rate_interval]) [[model]]'
    assert substitute_variables(expr, SAMPLE_VALUES) == (
        'rate(x{model=~"tiny-llama",key="k1",n="n1"}[1m]) tiny-llama'
    )
    with pytest.raises(InvalidInput, match=r"\$gpu"):
        substitute_variables("x{gpu=~'$gpu'}", SAMPLE_VALUES)


def test_every_panel_expression_parses_in_a_real_prometheus(
    fake_appliance: FakeAppliance,  # noqa: F811
) -> None:
    client = PrometheusClient(fake_appliance.url)
    checked = 0
    for name in DASHBOARDS:
        for title, expr in panel_expressions(load_dashboard(name)):
            try:
                client.query(substitute_variables(expr, SAMPLE_VALUES))
            except PodiumError as exc:
                pytest.fail(f"{name}: panel {title!r}: {exc}")
            checked += 1
    assert checked >= 40
    # The check itself catches a broken expression.
    with pytest.raises(PodiumError, match="rejected query"):
        client.query("sum(rate(podium_gateway_requests_total[1m])")


def test_alert_rules_load_and_evaluate_without_errors(
    fake_appliance: FakeAppliance,  # noqa: F811
) -> None:
    with urllib.request.urlopen(f"{fake_appliance.url}/api/v1/rules", timeout=5) as response:
        groups = json.load(response)["data"]["groups"]
    rules = [r for g in groups for r in g["rules"]]
    assert len(rules) == 10
    assert [r["name"] for r in rules if r["health"] == "err"] == []


def test_grafana_provisioning_points_at_prometheus_and_the_dashboards() -> None:
    files = render_grafana_provisioning(
        "http://10.77.0.10:9090", dashboards_path="/srv/dashboards", scrape_interval="10s"
    )
    source = yaml.safe_load(files["datasources/podium.yml"])["datasources"][0]
    assert source["uid"] == DATASOURCE_UID
    assert source["url"] == "http://10.77.0.10:9090"
    assert source["jsonData"]["timeInterval"] == "10s"
    assert "secureJsonData" not in source
    provider = yaml.safe_load(files["dashboards/podium.yml"])["providers"][0]
    assert provider["options"]["path"] == "/srv/dashboards"
    tls = yaml.safe_load(
        render_grafana_provisioning("https://prom:9090", ca_pem="-----BEGIN X-----\n")[
            "datasources/podium.yml"
        ]
    )["datasources"][0]
    assert tls["jsonData"]["tlsAuthWithCACert"] is True
    assert tls["secureJsonData"]["tlsCACert"] == "-----BEGIN X-----\n"
    with pytest.raises(InvalidInput, match="prometheus_url 'prom:9090'"):
        render_grafana_provisioning("prom:9090")
