"""systemd-networkd files of the network role: one per VLAN parent, VLAN and bridge."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from podium.render import render_template

PREFIX = "10-podium"


def build(host: str, settings: Mapping[str, Any]) -> dict[str, str]:
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
