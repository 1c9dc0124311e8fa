"""Tests of the lab network: naming, the NAT ruleset, a real bridge with namespaces."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from podium.drivers.base import LabNetwork
from podium.lab import network as labnet
from tests.fixtures_lab import lab_network

__all__ = ["lab_network"]


def test_interface_names_fit_the_kernel_limit_for_the_longest_lab_name() -> None:
    lab = "a" * 11
    assert len(labnet.bridge_name(lab)) <= 15
    assert len(labnet.veth_name(lab, "node-with-a-long-name")) <= 15


def test_veth_names_are_stable_and_distinct_per_lab_and_node() -> None:
    assert labnet.veth_name("lab", "node1") == labnet.veth_name("lab", "node1")
    names = {labnet.veth_name(lab, node) for lab in ("lab", "lab2") for node in ("n1", "n2")}
    assert len(names) == 4


def test_ruleset_masquerades_only_the_lab_subnet_in_the_labs_own_table_when_online() -> None:
    rules = labnet.nft_ruleset(LabNetwork("lab", "10.77.0.0/24", "10.77.0.1", online=True))
    assert "table ip podium_lab {" in rules
    assert "ip saddr 10.77.0.0/24 ip daddr != 10.77.0.0/24 masquerade" in rules
    assert 'oifname "pdm-lab" drop' in rules
    # Only this table is touched: no flush of the whole ruleset.
    assert "flush ruleset" not in rules


def test_offline_ruleset_has_no_nat_and_forwards_nothing_off_the_bridge() -> None:
    rules = labnet.nft_ruleset(LabNetwork("lab", "10.77.0.0/24", "10.77.0.1"))
    assert "table ip podium_lab {" in rules
    assert "masquerade" not in rules and "nat" not in rules
    assert 'iifname "pdm-lab" drop' in rules
    assert "flush ruleset" not in rules


def test_node_resolver_has_no_loopback_nameserver() -> None:
    text = labnet.resolv_conf()
    servers = [line.split()[1] for line in text.splitlines() if line.startswith("nameserver")]
    assert servers
    assert not any(s.startswith("127.") or s == "::1" for s in servers)


def _ns(ns: str, *command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", "netns", "exec", ns, *command], capture_output=True, text=True)


LISTEN = (
    "import socket,sys; s=socket.create_server((sys.argv[1], 2222)); s.settimeout(10);"
    " print('ready', flush=True); c, _ = s.accept(); c.sendall(b'hello'); c.close()"
)
CONNECT = (
    "import socket,sys; c=socket.create_connection((sys.argv[1], 2222), timeout=5);"
    " print(c.recv(5).decode())"
)


def _tcp_reaches(from_ns: str, to_ns: str | None, address: str) -> bool:
    """A TCP connection from one namespace to a listener in another (None: the host)."""
    listen = [sys.executable, "-c", LISTEN, address]
    where = ["ip", "netns", "exec", to_ns] if to_ns else []
    with subprocess.Popen([*where, *listen], stdout=subprocess.PIPE, text=True) as server:
        try:
            assert server.stdout is not None and server.stdout.readline().strip() == "ready"
            client = _ns(from_ns, sys.executable, "-c", CONNECT, address)
            return client.stdout.strip() == "hello"
        finally:
            server.kill()


def _leftovers(network: LabNetwork, nodes: list[str]) -> list[str]:
    found = []
    netns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
    for node in nodes:
        if labnet.netns_name(network.lab, node) in netns:
            found.append(f"netns of {node}")
        if labnet.veth_name(network.lab, node) in links:
            found.append(f"veth of {node}")
    if labnet.bridge_name(network.lab) + ":" in links:
        found.append("bridge")
    table = ["nft", "list", "table", "ip", labnet.nft_table(network.lab)]
    if subprocess.run(table, capture_output=True).returncode == 0:
        found.append("nft table")
    return found


@pytest.mark.lab
@pytest.mark.parametrize("online", [False, True], ids=["offline", "online"])
def test_nodes_reach_each_other_and_the_gateway_and_removal_leaves_nothing(
    lab_network: LabNetwork, tmp_path: Path, online: bool
) -> None:
    network = LabNetwork(lab_network.lab, lab_network.subnet, lab_network.gateway, online=online)
    nodes = ["n1", "n2"]
    prefix = network.gateway.rsplit(".", 1)[0]
    addresses = {"n1": f"{prefix}.11", "n2": f"{prefix}.12"}
    forward_before = labnet.IP_FORWARD.read_text().strip()
    try:
        for _ in range(2):  # the second round proves it is idempotent
            labnet.create_network(network, tmp_path)
            for node in nodes:
                labnet.attach_node(network, node, addresses[node])
        ns1 = labnet.netns_name(network.lab, "n1")
        addrs = _ns(ns1, "ip", "-o", "-4", "addr", "show", "dev", "host0").stdout
        assert addrs.count("inet ") == 1, addrs
        ns2 = labnet.netns_name(network.lab, "n2")
        assert _tcp_reaches(ns1, ns2, addresses["n2"]), "n1 cannot reach n2"
        assert _tcp_reaches(ns1, None, network.gateway), "n1 cannot reach the host"
        route = _ns(ns1, "ip", "route", "show", "default").stdout
        assert f"via {network.gateway}" in route
        # Forwarding is turned on only for NAT; offline the lab leaves it as it was.
        assert labnet.IP_FORWARD.read_text().strip() == ("1" if online else forward_before)
    finally:
        for node in nodes:
            labnet.detach_node(network, node)
        labnet.remove_network(network, tmp_path)
    assert _leftovers(network, nodes) == []
    other_labs = (
        "pdm-" in subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
    )
    if not other_labs:
        assert labnet.IP_FORWARD.read_text().strip() == forward_before
