"""The gateways' one address: keepalived moves gateway.address to a gateway node whose own
gateway answers, by VRRP unicast between the gateway nodes."""

from io import StringIO
from typing import Any

from pyinfra import host
from pyinfra.api.exceptions import DeployError
from pyinfra.facts.server import Command
from pyinfra.operations import apt, files, systemd
from pyinfra.operations.util import any_changed

from podium import network_files
from podium.files import files_for
from podium.pinned import node_versions
from roles import checks

CONF = "/etc/keepalived/keepalived.conf"
HEALTH = "/etc/keepalived/podium-gateway-health"


def with_interface(settings: dict[str, Any]) -> dict[str, Any]:
    """Settings with the interface keepalived puts the address on: the stack's, or the one holding
    the node's address (host0 in the lab's containers, eno1 on bare metal)."""
    floating = settings["floating"]
    if floating["interface"]:
        return settings
    listed = host.get_fact(Command, command="ip -o -4 addr show") or ""
    found = network_files.interface_holding(floating["own"], listed)
    if found is None:
        raise DeployError(f"{host.name}: no interface holds the node's address {floating['own']}; "
                          "name it in the stack as nodes[].interface")
    return {**settings, "floating": {**floating, "interface": found}}


def hold_the_address(settings: dict[str, Any]) -> None:
    """keepalived from Debian, its settings and the check of the local gateway; restarted only
    when one of them changed."""
    rendered = files_for("gateway", host.name, with_interface(settings))
    installed = apt.packages(name="keepalived for the gateways' address",
                             packages=node_versions().pinned("gateway", ["keepalived"]))
    changed = [
        files.put(name="Check of the local gateway", src=StringIO(rendered["keepalived/podium-gateway-health"]),
                  dest=HEALTH, user="root", group="root", mode="755"),
        files.put(name="keepalived settings", src=StringIO(rendered["keepalived/keepalived.conf"]), dest=CONF,
                  user="root", group="root", mode="644"),
    ]
    systemd.service(name="Restart keepalived after its files changed", service="keepalived", running=True,
                    enabled=True, restarted=True, _if=any_changed(installed, *changed))
    systemd.service(name="Run keepalived", service="keepalived", running=True, enabled=True)


def check(settings: dict[str, Any]) -> None:
    checks.passes(name="keepalived runs", commands=["systemctl is-active keepalived"],
                  proves=f"keepalived active for {settings['floating']['address']}")


def release_the_address() -> None:
    systemd.service(name="Stop keepalived", service="keepalived", running=False, enabled=False)
    for path in (CONF, HEALTH):
        files.file(name=f"Remove {path}", path=path, present=False)
