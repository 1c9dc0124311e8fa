"""The gateway role writes the console's settings: the stack's admin sources, the node's release
records and the stack's Prometheus."""

from __future__ import annotations

from ipaddress import ip_network

import yaml

from podium.files import files_for
from podium.plan.components import BY_NAME
from podium.render import REPO
from podium.services.gateway.config import GatewayConfig
from podium.stack import load_stack


def gateway_config(stack_dir: str, host: str) -> GatewayConfig:
    stack = load_stack(REPO / stack_dir)
    rendered = files_for("gateway", host, BY_NAME["gateway"].settings(stack, host))
    return GatewayConfig.model_validate(yaml.safe_load(rendered["gateway.yaml"]))


def test_the_lab_gateways_console_answers_the_lab_host_alone_and_asks_its_prometheus() -> None:
    console = gateway_config("stacks/lab", "ctrl").console
    assert console is not None
    # The lab has no admin_sources: the host's end of the lab network administers it.
    assert console.sources == [ip_network("10.77.0.1/32")]
    assert str(console.releases_dir) == "/var/lib/podium/releases"
    assert console.prometheus_url == "http://10.77.0.10:9090"


def test_without_monitoring_the_console_takes_the_gateways_own_figures() -> None:
    console = gateway_config("tests/stacks/labroll", "ctrl").console
    assert console is not None and console.prometheus_url is None
    assert console.sources == [ip_network("10.77.13.1/32")]
