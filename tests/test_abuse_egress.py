"""Egress: a node opens connections only to the stack's own networks, its artifact mirror and its
time servers; the rest is dropped and counted, Podium's firewall reloads without touching other
tables (kube-proxy's, flannel's), and the lab reaches packages through its host, with no NAT."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from podium.drivers.base import LabNetwork
from podium.errors import InvalidInput
from podium.files import files_for
from podium.lab import apt_proxy
from podium.lab import network as labnet
from podium.plan.components import BY_NAME
from podium.plan.egress import egress_settings
from podium.render import REPO
from podium.secrets import state_root
from podium.stack.loader import load_stack
from podium.stack.model import Stack
from tests.fixtures_lab import podium, require_lab_host, unique_lab_network

# TEST-NET-1: documentation addresses, routed nowhere; the test also drops them on the host.
OUTSIDE = "192.0.2.10"
OUTSIDE_NET = "192.0.2.0/24"

CLUSTER_STACK = """\
name: eg
artifact_mirror: http://10.60.0.5:8080/podium
host_network: {subnet: 10.60.0.0/24, gateway: 10.60.0.1}
nodes:
  - {name: srv, address: 10.60.0.10}
  - {name: agent, address: 10.60.0.11}
  - {name: edge, address: 10.70.0.5}
network:
  ntp_servers: [10.80.0.1]
  vlans:
    - {name: storage, id: 200, nodes: [srv, agent], subnet: 10.200.0.0/24}
kubernetes: {distribution: k3s, server: srv, agents: [agent]}
"""


def _stack(tmp_path: Path, text: str) -> Stack:
    folder = tmp_path / "stack"
    folder.mkdir(exist_ok=True)
    (folder / "stack.yaml").write_text(text, encoding="utf-8")
    return load_stack(str(folder))


def _firewall(stack: Stack, host: str) -> str:
    return files_for("base", host, BY_NAME["base"].settings(stack, host))["nftables.conf"]


def test_output_allows_the_stacks_networks_mirror_and_clocks_and_counts_the_rest(tmp_path: Path) -> None:
    rules = _firewall(_stack(tmp_path, CLUSTER_STACK), "agent")
    output = rules[rules.index("chain output"):]
    assert "policy drop;" in output.splitlines()[1], "the output chain must drop by default"
    # The host network and VLAN as subnets; a node outside them by its own address.
    assert "ip daddr { 10.60.0.0/24, 10.70.0.5/32, 10.200.0.0/24 } accept" in rules
    assert "ip daddr { 10.60.0.5 } tcp dport 8080 accept" in rules, "the artifact mirror is not allowed"
    assert "ip daddr { 10.80.0.1 } udp dport 123 accept" in rules, "the time server is not allowed"
    assert rules.rstrip().splitlines()[-3].strip() == 'counter name "egress_dropped" drop'


def test_cluster_nodes_open_what_k3s_needs_and_reload_only_podiums_table(tmp_path: Path) -> None:
    stack = _stack(tmp_path, CLUSTER_STACK)
    server, agent, edge = (_firewall(stack, h) for h in ("srv", "agent", "edge"))
    peers = "10.60.0.10, 10.60.0.11"
    assert f"ip saddr {{ {peers}, 10.42.0.0/16 }} tcp dport 6443 accept" in server
    assert "dport 6443" not in agent, "only the server opens the API port"
    for rules in (server, agent):
        assert f"ip saddr {{ {peers}, 10.42.0.0/16 }} tcp dport 10250 accept" in rules
        assert f"ip saddr {{ {peers} }} udp dport 8472 accept" in rules
        assert "ip daddr { 10.42.0.0/16, 10.43.0.0/16 } accept" in rules
    assert "8472" not in edge and "10.42.0.0/16" not in edge, "a node off the cluster opens nothing for it"
    for rules in (server, agent, edge):
        statements = [x.strip() for x in rules.splitlines() if not x.strip().startswith("#")]
        assert not any(x.startswith("flush") for x in statements), "a flush would wipe others' tables"
        assert rules.index("table inet podium\n") < rules.index("delete table inet podium\n")


def test_a_mirror_that_is_not_a_host_name_is_refused_naming_the_field(tmp_path: Path) -> None:
    # Shell metacharacters never get past the stack's schema...
    with pytest.raises(InvalidInput, match=r"artifact_mirror = 'http://a;b/podium': is a URL of"):
        _stack(tmp_path, CLUSTER_STACK.replace("http://10.60.0.5:8080/podium", "http://a;b/podium"))
    # ...and a URL the schema takes whose host is no host name is refused by the firewall's settings.
    stack = _stack(tmp_path, CLUSTER_STACK.replace("http://10.60.0.5:8080/podium", "http://a_b/podium"))
    with pytest.raises(InvalidInput, match=r"artifact_mirror: 'a_b' is neither an address nor a host name"):
        egress_settings(stack)


def _in_netns(ns: str, *command: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", "netns", "exec", ns, *command], input=stdin, capture_output=True, text=True)


FOREIGN = """\
table ip kube-proxy-probe {
    chain services { type nat hook prerouting priority dstnat; policy accept; }
}
table inet flannel-probe {
    chain forward { type filter hook forward priority filter; policy accept; }
}
"""


def test_loading_the_firewall_twice_keeps_other_tables_in_a_real_netns(tmp_path: Path) -> None:
    """nft itself loads the rendered file into a namespace the test makes, beside two foreign
    tables that stand for kube-proxy's and flannel's: they survive, Podium's table is replaced."""
    require_lab_host()
    conf = tmp_path / "nftables.conf"
    conf.write_text(_firewall(_stack(tmp_path, CLUSTER_STACK), "srv"), encoding="utf-8")
    ns = "pdmeg" + uuid.uuid4().hex[:8]
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        assert _in_netns(ns, "nft", "-f", "-", stdin=FOREIGN).returncode == 0
        for _ in range(2):
            loaded = _in_netns(ns, "nft", "-f", str(conf))
            assert loaded.returncode == 0, loaded.stderr
        tables = _in_netns(ns, "nft", "list", "tables").stdout
        assert "table ip kube-proxy-probe" in tables and "table inet flannel-probe" in tables, tables
        assert tables.count("table inet podium") == 1, tables
        counter = _in_netns(ns, "nft", "list", "counter", "inet", "podium", "egress_dropped")
        assert counter.returncode == 0, counter.stderr
    finally:
        subprocess.run(["ip", "netns", "del", ns], check=False)


def test_lab_machines_of_either_driver_get_the_lab_hosts_proxy_as_their_only_apt_source() -> None:
    from podium.drivers.base import MachineSpec
    from podium.drivers.libvirt_machine import seed_files

    network = LabNetwork("lab", "10.77.0.0/24", "10.77.0.1")
    sources = labnet.apt_sources(network)
    entries = [x for x in sources.splitlines() if x.startswith("deb")]
    assert entries == ["deb http://10.77.0.1:3142/debian bookworm main"]
    seeded = seed_files(network, MachineSpec("vm1", "10.77.0.20"), {})
    assert seeded["etc/apt/sources.list"][0] == sources


def test_the_package_proxy_listens_on_the_gateway_for_the_lab_subnet_and_passes_only_debian() -> None:
    network = LabNetwork("lab", "10.77.0.0/24", "10.77.0.1")
    conf = apt_proxy.nginx_conf(network, Path("/x"))
    assert "listen 10.77.0.1:3142;" in conf and conf.count("listen ") == 1
    assert "allow 10.77.0.0/24;\n        deny all;" in conf
    assert conf.count("proxy_pass ") == 1 and "proxy_pass http://deb.debian.org/debian/;" in conf
    assert "return 403;" in conf


def test_lab_up_adds_nat_only_when_asked_online(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from podium.lab.up import lab_parts

    monkeypatch.setenv("PODIUM_STATE_DIR", str(tmp_path / "state"))
    stack = load_stack(str(REPO / "tests" / "stacks" / "labhost"))
    offline, online = lab_parts(stack).network, lab_parts(stack, online=True).network
    assert not offline.online and "masquerade" not in labnet.nft_ruleset(offline)
    assert online.online and "masquerade" in labnet.nft_ruleset(online)


# -- on a real lab machine ---------------------------------------------------------------------


def _node(folder: Path, *command: str) -> subprocess.CompletedProcess[str]:
    return podium("lab", "ssh", "n1", "--stack", str(folder), "--", *command, timeout=120)


def _counter_packets(folder: Path) -> int:
    listed = _node(folder, "nft", "-j", "list", "counter", "inet", "podium", "egress_dropped")
    assert listed.returncode == 0, listed.stdout + listed.stderr
    entries = json.loads(listed.stdout)["nftables"]
    return int(next(e["counter"]["packets"] for e in entries if "counter" in e))


def _guard(network: LabNetwork) -> str:
    return f"pdmguard{network.lab}"


def _host_guard(network: LabNetwork, add: bool) -> None:
    """A drop on the host for TEST-NET-1 from the lab bridge, earliest hook: whatever the node's
    firewall does, nothing the test sends to OUTSIDE leaves this computer."""
    table = _guard(network)
    if add:
        ruleset = f"""\
table ip {table} {{
    chain prerouting {{
        type filter hook prerouting priority raw; policy accept;
        iifname "{labnet.bridge_name(network.lab)}" ip daddr {OUTSIDE_NET} counter drop
    }}
}}
"""
        subprocess.run(["nft", "-f", "-"], input=ruleset, text=True, check=True)
    else:
        subprocess.run(["nft", "delete", "table", "ip", table], check=False, capture_output=True)


def _guard_packets(network: LabNetwork) -> int:
    listed = subprocess.run(["nft", "-j", "list", "table", "ip", _guard(network)], capture_output=True,
                            text=True, check=True)
    rules = [e["rule"] for e in json.loads(listed.stdout)["nftables"] if "rule" in e]
    return sum(int(x["counter"]["packets"]) for r in rules for x in r["expr"] if "counter" in x)


@pytest.fixture(scope="module")
def egress_lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, LabNetwork]]:
    """One lab machine with the base role, on a lab name and subnet of this test's own."""
    require_lab_host()
    network = unique_lab_network()
    prefix = network.gateway.rsplit(".", 1)[0]
    folder = tmp_path_factory.mktemp("egress") / network.lab
    folder.mkdir()
    (folder / "stack.yaml").write_text(
        f"name: {network.lab}\n"
        f"host_network: {{subnet: {network.subnet}, gateway: {network.gateway}}}\n"
        f"nodes:\n  - {{name: n1, address: {prefix}.10, machine: {{driver: nspawn, cpus: 1, memory: 1GiB}}}}\n",
        encoding="utf-8",
    )
    try:
        up = podium("lab", "up", str(folder))
        assert up.returncode == 0, up.stdout + up.stderr
        yield folder, network
    finally:
        _host_guard(network, add=False)
        down = podium("lab", "down", str(folder))
        (REPO / "inventory" / f"{network.lab}.py").unlink(missing_ok=True)
        shutil.rmtree(state_root() / network.lab, ignore_errors=True)
        assert down.returncode == 0, down.stdout + down.stderr
    tables = subprocess.run(["nft", "list", "tables"], capture_output=True, text=True).stdout
    assert labnet.nft_table(network.lab) not in tables, "lab down left the lab's nft table"
    assert not apt_proxy.proxy_folder(network).exists(), "lab down left the package proxy's folder"
    procs = subprocess.run(["pgrep", "-af", f"/{network.lab}/apt-proxy/"], capture_output=True, text=True)
    assert procs.stdout == "", f"lab down left the package proxy running: {procs.stdout}"


@pytest.mark.lab
def test_a_node_cannot_reach_outside_the_lab_and_the_drop_is_counted(egress_lab: tuple[Path, LabNetwork]) -> None:
    folder, network = egress_lab
    _host_guard(network, add=True)
    try:
        before = _counter_packets(folder)
        # One string: ssh hands it to the node's shell, and `timeout` must hold the redirection.
        tried = _node(folder, f"timeout 5 bash -c '</dev/tcp/{OUTSIDE}/80'")
        assert tried.returncode != 0, f"n1 opened a connection to {OUTSIDE}"
        assert _counter_packets(folder) > before, "the node's egress_dropped counter did not rise"
        assert _guard_packets(network) == 0, "a packet for TEST-NET-1 left the node; the host dropped it"
    finally:
        _host_guard(network, add=False)


@pytest.mark.lab
def test_the_node_still_reaches_the_package_proxy_and_the_hosts_clock(egress_lab: tuple[Path, LabNetwork]) -> None:
    folder, network = egress_lab
    node_address = network.gateway.rsplit(".", 1)[0] + ".10"
    # The base role's apt-get update went through the lab host's proxy, not through NAT.
    access = (apt_proxy.proxy_folder(network) / "access.log").read_text(encoding="utf-8")
    assert any(line.startswith(f"{node_address} ") and "/debian/dists/" in line and '" 200 ' in line
               for line in access.splitlines()), f"no apt request of n1 went through the proxy:\n{access}"
    sources = _node(folder, "cat", "/etc/apt/sources.list").stdout
    assert f"http://{network.gateway}:{labnet.APT_PORT}/debian" in sources
    assert "deb.debian.org" not in sources
    # The proxy passes Debian's archive on and nothing else.
    other = _node(folder, "curl", "-s", "-o", "/dev/null", "-w", "%{http_code}",
                  f"http://{network.gateway}:{labnet.APT_PORT}/elsewhere/")
    assert other.stdout.strip() == "403", other.stdout + other.stderr
    deadline = time.monotonic() + 90
    reach = ""
    while time.monotonic() < deadline:
        sources_out = _node(folder, "chronyc", "-n", "sources").stdout
        line = next((x for x in sources_out.splitlines() if f" {network.gateway} " in f" {x} "), "")
        reach = line.split()[4] if len(line.split()) > 4 else ""
        if reach not in ("", "0"):
            break
        time.sleep(3)
    assert reach not in ("", "0"), f"chrony on n1 got no answer from the lab host {network.gateway}"


@pytest.mark.lab
def test_the_host_gives_the_lab_subnet_no_nat_by_default(egress_lab: tuple[Path, LabNetwork]) -> None:
    _, network = egress_lab
    ruleset = subprocess.run(["nft", "list", "ruleset"], capture_output=True, text=True, check=True).stdout
    assert "masquerade" not in subprocess.run(
        ["nft", "list", "table", "ip", labnet.nft_table(network.lab)], capture_output=True, text=True, check=True
    ).stdout
    nat_lines = [x for x in ruleset.splitlines() if network.subnet in x and ("masquerade" in x or "snat" in x)]
    assert nat_lines == [], f"the host NATs the lab subnet: {nat_lines}"


@pytest.mark.lab
def test_a_foreign_table_survives_a_base_role_reapply(egress_lab: tuple[Path, LabNetwork]) -> None:
    """What kube-proxy and flannel would hold: a table of their own on the node, kept when the
    base role rewrites and reloads Podium's firewall, and when nftables.service restarts."""
    folder, _ = egress_lab
    added = _node(folder, "nft", "add", "table", "ip", "kube-proxy-probe")
    assert added.returncode == 0, added.stderr
    # Changed on the node, so the role writes the file again and reloads the firewall.
    _node(folder, "sed", "-i", "s/^delete table inet podium$/# changed by hand/", "/etc/nftables.conf")
    reapplied = podium("up", str(folder), "--reapply", "--only", "base")
    assert reapplied.returncode == 0, reapplied.stdout + reapplied.stderr
    assert "delete table inet podium" in _node(folder, "cat", "/etc/nftables.conf").stdout
    tables = _node(folder, "nft", "list", "tables").stdout
    assert "table ip kube-proxy-probe" in tables, f"the base role's reload wiped a foreign table: {tables}"
    assert "table inet podium" in tables
    restarted = _node(folder, "systemctl", "restart", "nftables")
    assert restarted.returncode == 0, restarted.stderr
    tables = _node(folder, "nft", "list", "tables").stdout
    assert "table ip kube-proxy-probe" in tables, f"restarting nftables wiped a foreign table: {tables}"
    assert "table inet podium" in tables
