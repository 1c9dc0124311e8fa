"""The gateway role writes the console's settings: the stack's admin sources, the node's release
records and the stack's Prometheus; `podium lab up` names the console's URL."""

from __future__ import annotations

from ipaddress import ip_network

import yaml

from podium.files import files_for
from podium.lab.access import access_lines
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


def test_lab_up_names_the_console_on_the_address_the_lab_host_reaches() -> None:
    stack = load_stack(REPO / "stacks" / "lab")
    lines = access_lines(stack, "pdm-k", "/ca.crt")
    printed = [x.split(": ", 1)[0] for x in lines]
    assert printed == ["gateway", "grpc", "grpc-tls-name", "console", "key", "ca", "try"], lines
    # The gateway node's own address, served over TLS: the browser keeps the Secure cookie.
    assert lines[3] == "console: https://10.77.0.10:8443/console/"


def test_the_console_line_follows_the_gateways_one_address() -> None:
    stack = load_stack(REPO / "tests" / "stacks" / "labstore")
    assert stack.gateway is not None and stack.gateway.address is not None
    console = [x for x in access_lines(stack, "pdm-k", "/ca.crt") if x.startswith("console: ")]
    assert console == [f"console: https://{stack.gateway.address}:8443/console/"]


def test_without_tls_lab_up_says_the_console_pages_need_it() -> None:
    stack = load_stack(REPO / "stacks" / "lab")
    assert stack.gateway is not None
    plain = stack.model_copy(update={"gateway": stack.gateway.model_copy(update={"tls": False})})
    console = [x for x in access_lines(plain, "pdm-k", "/ca.crt") if x.startswith("console: ")]
    assert console == ["console: pages need gateway.tls; JSON twins at http://10.77.0.10:8443/console/api/"]
