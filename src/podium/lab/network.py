"""Create and remove a lab's host-only network: bridge, NAT table, a namespace and veth per node."""

from __future__ import annotations

import hashlib
import ipaddress
import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING

from podium.commands import run_tool
from podium.errors import PodiumError

if TYPE_CHECKING:
    # For annotations only: the drivers import this module, so importing them here would
    # make `podium.lab.network` unimportable on its own (a cycle through drivers/__init__).
    from podium.drivers.base import LabNetwork

log = logging.getLogger(__name__)

NETNS_DIR = Path("/run/netns")
IP_FORWARD = Path("/proc/sys/net/ipv4/ip_forward")
NODE_INTERFACE = "host0"


def bridge_name(lab: str) -> str:
    return f"pdm-{lab}"


def netns_name(lab: str, node: str) -> str:
    return f"pdm-{lab}-{node}"


def veth_name(lab: str, node: str) -> str:
    """Host end of a node's veth: hashed, because "<lab>-<node>" overflows 15 bytes."""
    return "pv" + hashlib.sha256(f"{lab}/{node}".encode()).hexdigest()[:12]


def nft_table(lab: str) -> str:
    return f"podium_{lab}"


def nft_ruleset(network: LabNetwork) -> str:
    """The lab's own nftables table. Offline (the default) nothing from the lab subnet is
    forwarded off the bridge; online the subnet is NATed out. Nothing new comes in either way."""
    table, bridge, subnet = nft_table(network.lab), bridge_name(network.lab), network.subnet
    if network.online:
        nat = f"""\
    chain postrouting {{
        type nat hook postrouting priority srcnat; policy accept;
        ip saddr {subnet} ip daddr != {subnet} masquerade
    }}
"""
        out = f'iifname "{bridge}" ip saddr {subnet} accept'
    else:
        nat = ""
        # Between the lab's machines (bridged traffic shows here where br_netfilter is loaded),
        # and nothing from the lab off the bridge.
        out = f'iifname "{bridge}" oifname "{bridge}" accept\n        iifname "{bridge}" drop'
    # Declaring then deleting the table first makes the load atomic and idempotent.
    return f"""\
table ip {table}
delete table ip {table}
table ip {table} {{
{nat}    chain forward {{
        type filter hook forward priority filter; policy accept;
        {out}
        oifname "{bridge}" ct state established,related accept
        oifname "{bridge}" drop
    }}
}}
"""


APT_PORT = 3142
# The suite of the lab image (podium.lab.image.ImageRecipe).
APT_SUITE = "bookworm"


def apt_sources(network: LabNetwork) -> str:
    """The nodes' apt source: the lab host's package proxy on the gateway, never the outside;
    none for a stack that serves its own bundle (role base names the mirror)."""
    if network.mirror:
        return "# Written by Podium: packages come from the stack's mirror, which role base names here.\n"
    return (
        "# Written by Podium: packages come through the lab host (podium lab up).\n"
        f"deb http://{network.gateway}:{APT_PORT}/debian {APT_SUITE} main\n"
    )


def resolv_conf(network: LabNetwork | None = None) -> str:
    """The host's resolver settings for the nodes; a loopback stub is useless inside a node.
    None for an offline lab served from a bundle: its nodes resolve one another from /etc/hosts,
    and a query to the host's resolver would be a packet leaving the lab subnet."""
    if network is not None and network.mirror:
        return "# Written by Podium: an offline lab has no resolver; names come from /etc/hosts.\n"
    for candidate in (Path("/etc/resolv.conf"), Path("/run/systemd/resolve/resolv.conf")):
        try:
            text = candidate.read_text()
        except OSError:
            continue
        servers = [
            line.split()[1]
            for line in text.splitlines()
            if line.startswith("nameserver") and len(line.split()) > 1
        ]
        if servers and not all(_is_loopback(s) for s in servers):
            return "".join(
                line + "\n"
                for line in text.splitlines()
                if not (line.startswith("nameserver") and _is_loopback(line.split()[1]))
            )
    raise PodiumError(
        "The host has no usable nameserver in /etc/resolv.conf for the lab nodes; "
        "add a non-loopback nameserver line there."
    )


LAB_MTU = 9000


def create_network(network: LabNetwork, state_dir: Path) -> None:
    """Bridge with the gateway address and the lab's table (with NAT and forwarding only when
    online); safe to repeat."""
    bridge = bridge_name(network.lab)
    state_dir.mkdir(parents=True, exist_ok=True)
    record = state_dir / "network.json"
    if not record.exists():
        # Written before anything is created, so removal finds even a half-made network.
        before = IP_FORWARD.read_text().strip()
        record.write_text(json.dumps({"network": network.__dict__, "ip_forward_before": before}))
    if not _link_exists(bridge):
        _ip("link", "add", bridge, "type", "bridge")
    gateway = f"{network.gateway}/{network.prefixlen}"
    if f"inet {gateway} " not in _ip_out("-o", "-4", "addr", "show", "dev", bridge):
        _ip("addr", "add", gateway, "dev", bridge)
    # Jumbo frames on the host side, so a lab VLAN can be declared with MTU 9000; each node's
    # own interface stays at 1500 until its network role raises it.
    _ip("link", "set", bridge, "mtu", str(LAB_MTU), "up")
    if network.online:
        IP_FORWARD.write_text("1\n")
    run_tool(["nft", "-f", "-"], input_text=nft_ruleset(network))


def remove_network(network: LabNetwork, state_dir: Path) -> None:
    """Remove the bridge and NAT table; restore ip_forward when no other lab bridge is left."""
    bridge = bridge_name(network.lab)
    if _link_exists(bridge):
        _ip("link", "del", bridge)
    if run_tool(["nft", "list", "table", "ip", nft_table(network.lab)], check=False).returncode == 0:
        run_tool(["nft", "delete", "table", "ip", nft_table(network.lab)])
    record = state_dir / "network.json"
    if record.exists():
        before = json.loads(record.read_text()).get("ip_forward_before", "1")
        other_labs = [name for name in _links() if name.startswith("pdm-")]
        if before == "0" and not other_labs:
            IP_FORWARD.write_text("0\n")
        record.unlink()


def attach_node(network: LabNetwork, node: str, address: str) -> str:
    """Give `node` its namespace and veth on the lab bridge; returns the namespace name."""
    ns, veth = netns_name(network.lab, node), veth_name(network.lab, node)
    if not (NETNS_DIR / ns).exists():
        _ip("netns", "add", ns)
    if not _link_exists(veth):
        _ip("link", "add", veth, "type", "veth", "peer", "name", NODE_INTERFACE, "netns", ns)
        _ip("link", "set", veth, "alias", f"podium lab={network.lab} node={node}")
    _ip("link", "set", veth, "mtu", str(LAB_MTU), "master", bridge_name(network.lab), "up")
    inside = ["netns", "exec", ns, "ip"]
    cidr = f"{address}/{network.prefixlen}"
    if f"inet {cidr} " not in _ip_out(*inside, "-o", "-4", "addr", "show", "dev", NODE_INTERFACE):
        _ip(*inside, "addr", "add", cidr, "dev", NODE_INTERFACE)
    _ip(*inside, "link", "set", "lo", "up")
    _ip(*inside, "link", "set", NODE_INTERFACE, "up")
    _ip(*inside, "route", "replace", "default", "via", network.gateway)
    return ns


def detach_node(network: LabNetwork, node: str) -> None:
    """Remove the node's veth and namespace (deleting one veth end removes its peer)."""
    ns, veth = netns_name(network.lab, node), veth_name(network.lab, node)
    if _link_exists(veth):
        _ip("link", "del", veth)
    if (NETNS_DIR / ns).exists():
        _ip("netns", "del", ns)


def _is_loopback(address: str) -> bool:
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False


def _links() -> list[str]:
    out = _ip_out("-o", "link", "show")
    # Lines look like "7: pdm-lab: <BROADCAST,...>" or "8: pv12ab@if2: <...>".
    return [line.split(":")[1].strip().split("@")[0] for line in out.splitlines() if ":" in line]


def _link_exists(name: str) -> bool:
    return run_tool(["ip", "link", "show", "dev", name], check=False).returncode == 0


def _ip(*args: str) -> None:
    run_tool(["ip", *args])


def _ip_out(*args: str) -> str:
    return run_tool(["ip", *args]).stdout
