"""Where a node may open connections to: the stack's own networks, the artifact mirror, the
declared time servers and, on cluster nodes, what k3s needs; the base role drops the rest."""

from __future__ import annotations

import ipaddress
import re
from typing import Any
from urllib.parse import urlsplit

from podium.errors import InvalidInput
from podium.stack.model import Stack

Settings = dict[str, Any]

# A DNS name as nft takes it: anything else in a firewall rule could be read as more rule.
_LABEL = r"[A-Za-z0-9]([A-Za-z0-9-]{0,62}[A-Za-z0-9])?"
_HOSTNAME = re.compile(rf"^(?=.{{1,253}}$){_LABEL}(\.{_LABEL})*$")


def egress_settings(stack: Stack) -> Settings:
    """The same for every node: a node reaches its peers, the mirror and the clocks, nothing else."""
    return {
        "networks": _own_networks(stack),
        "mirrors": _mirrors(stack),
        "ntp": [_destination(server, "network.ntp_servers") for server in ntp_servers(stack)],
    }


def cluster_settings(stack: Stack, host: str) -> Settings | None:
    """What k3s needs open on a cluster node: the API server, the kubelet and flannel's VXLAN
    between cluster nodes, and the pod and service networks. None off the cluster."""
    # Imported here: podium.cluster reads the plan's components, which read this module.
    from podium.cluster import k3s

    kube = stack.kubernetes
    if not kube or kube.distribution != "k3s" or not kube.server:
        return None
    members = [kube.server, *kube.agents]
    if host not in members:
        return None
    return {
        "server": host == kube.server,
        "nodes": sorted(str(stack.node(n).address) for n in members),
        "pod_cidr": k3s.CLUSTER_CIDR,
        "service_cidr": k3s.SERVICE_CIDR,
        "api_port": k3s.SERVER_PORT,
        "kubelet_port": k3s.KUBELET_PORT,
        "vxlan_port": k3s.FLANNEL_VXLAN_PORT,
    }


def ntp_servers(stack: Stack) -> list[str]:
    # The lab's machines sync from the lab host, the site's from its own servers.
    servers = list(stack.network.ntp_servers)
    if not servers and stack.host_network:
        servers = [str(stack.host_network.gateway)]
    return servers


def _own_networks(stack: Stack) -> list[str]:
    """The host network, every VLAN subnet, and each node's own address outside those."""
    nets: list[ipaddress.IPv4Network] = []
    if stack.host_network:
        nets.append(ipaddress.IPv4Network(stack.host_network.subnet))
    nets += [ipaddress.IPv4Network(v.subnet) for v in stack.network.vlans]
    for node in stack.nodes:
        address = ipaddress.IPv4Address(str(node.address))
        if not any(address in net for net in nets):
            nets.append(ipaddress.IPv4Network(f"{address}/32"))
    return [str(net) for net in ipaddress.collapse_addresses(nets)]


def _mirrors(stack: Stack) -> list[Settings]:
    """The artifact mirror, and a Grafana repository when the stack names one (a site mirror).
    A bundle is served by a node of the stack, inside its own networks: nothing more opens."""
    site = None if stack.mirror_bundle else stack.mirror_url
    declared: list[tuple[str, str | None]] = [("artifact_mirror", site)]
    if stack.monitoring and stack.monitoring.grafana_repository:
        repository = stack.monitoring.grafana_repository.strip().partition(" ")[0]
        declared.append(("monitoring.grafana_repository", repository))
    out = []
    for field, url in declared:
        if not url:
            continue
        try:
            parts = urlsplit(url if "//" in url else f"//{url}")
            port = parts.port or (443 if parts.scheme == "https" else 80)
        except ValueError:
            raise InvalidInput(
                f"{field}: {url!r} is not a URL; write it like https://mirror.example.internal/podium"
            ) from None
        out.append({**_destination(parts.hostname or url, field), "port": port, "what": field})
    return out


def _destination(host: str, field: str) -> Settings:
    """`family` is the nft match for it: ip / ip6 for an address; a name nft resolves when the
    firewall loads, so it must resolve on the node from /etc/hosts or an allowed resolver."""
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        if not _HOSTNAME.match(host):
            raise InvalidInput(
                f"{field}: {host!r} is neither an address nor a host name; write an address "
                "(10.0.0.5) or a DNS name (mirror.example.internal)."
            ) from None
        return {"family": "ip", "address": host}
    return {"family": "ip6" if address.version == 6 else "ip", "address": str(address)}
