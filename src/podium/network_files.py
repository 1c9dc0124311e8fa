"""systemd-networkd files of the network role: one per VLAN parent, VLAN and bridge."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from podium.render import render_template

PREFIX = "10-podium"
# What the machines Podium creates call their own interface (nspawn's veth, the VM NIC their
# seed renames); `podium render` shows it where the role would find the interface on the node.
LAB_INTERFACE = "host0"


def interface_holding(address: str, ip_addr: str) -> str | None:
    """The interface that `ip -o -4 addr show` lists with `address` (an IPv4 address)."""
    for line in ip_addr.splitlines():
        # 3: eth1    inet 10.77.0.11/24 brd 10.77.0.255 scope global eth1\ ...
        fields = line.split()
        if len(fields) >= 4 and fields[2] == "inet" and fields[3].split("/")[0] == address:
            return fields[1].split("@")[0]
    return None


def needs_interface(settings: Mapping[str, Any]) -> bool:
    """Whether some file names the node's own interface, which the stack left to the role."""
    address = settings.get("parent_address")
    return any(v["parent"] is None for v in settings["vlans"]) or bool(address and address["interface"] is None)


def with_interface(settings: Mapping[str, Any], interface: str) -> dict[str, Any]:
    """`settings` with the node's own interface, where the stack left it unset, named `interface`."""
    out = dict(settings)
    out["vlans"] = [{**v, "parent": v["parent"] or interface} for v in settings["vlans"]]
    address = settings.get("parent_address")
    if address:
        out["parent_address"] = {**address, "interface": address["interface"] or interface}
    return out


def build(host: str, settings: Mapping[str, Any]) -> dict[str, str]:
    if needs_interface(settings):
        settings = with_interface(settings, LAB_INTERFACE)
    out: dict[str, str] = {}
    parents: dict[str, list[Mapping[str, Any]]] = {}
    for vlan in settings["vlans"]:
        parents.setdefault(vlan["parent"], []).append(vlan)
        out[f"{PREFIX}-{vlan['name']}.netdev"] = render_template("network/vlan.netdev.j2", v=vlan)
        out[f"{PREFIX}-{vlan['name']}.network"] = render_template("network/vlan.network.j2", v=vlan)
    address = settings.get("parent_address")
    if address:
        # A lab machine's own interface is always managed, so networkd never drops its address.
        parents.setdefault(address["interface"], [])
    for parent, vlans in parents.items():
        out[f"{PREFIX}-{parent}.network"] = render_template(
            "network/parent.network.j2",
            parent=parent,
            mtu=max([1500, *(v["mtu"] for v in vlans)]),
            vlans=[v["name"] for v in vlans],
            address=address if address and address["interface"] == parent else None,
        )
    for bridge in settings["bridges"]:
        out[f"{PREFIX}-{bridge['name']}.netdev"] = render_template("network/bridge.netdev.j2", b=bridge)
        if bridge["interfaces"]:
            out[f"{PREFIX}-{bridge['name']}.network"] = render_template("network/bridge.network.j2", b=bridge)
    return out
