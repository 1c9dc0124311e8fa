"""The network role names the node's own interface: the stack's, or the one holding the node's
address, never an assumed host0 (a Vagrant VM's is eth1 or ens5, bare metal's eno1)."""

from __future__ import annotations

import os
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pyinfra.api.exceptions import DeployError

from podium.files import files_for
from podium.network_files import interface_holding, with_interface
from podium.plan import make_plan
from podium.stack import load_stack
from podium.stack.versions import load_versions
from tests.fixtures_local_deploy import run_locally

LAB_NODE = """\
name: nic
host_network: {subnet: 10.216.0.0/24, gateway: 10.216.0.1}
nodes:
  - name: node1
    address: 10.216.0.11
    machine: {driver: nspawn}
  - name: node2
    address: 10.216.0.12
    machine: {driver: nspawn}
network:
  bridges: [{name: br-storage, nodes: [node1, node2], mtu: 9000}]
  vlans: [{name: storage, id: 200, nodes: [node1, node2], subnet: 10.200.0.0/24}]
"""


def network_settings(folder: Path, text: str, host: str = "node1") -> dict[str, Any]:
    folder.mkdir(exist_ok=True)
    (folder / "stack.yaml").write_text(text)
    actions = make_plan(load_stack(folder), load_versions())
    return dict(next(a.settings for a in actions if a.component == "network" and a.host == host))


@pytest.fixture
def namespace() -> Iterator[str]:
    """A network namespace of the test's own with the NIC a Vagrant VM has: ens5, the node's address."""
    if os.geteuid() != 0:
        pytest.skip("needs root to create a network namespace")
    name = f"pdm-nic-{uuid.uuid4().hex[:8]}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        for command in (
            # A veth pair, since kernels without the dummy module still have veth (nspawn needs it).
            ["ip", "link", "add", "ens5", "type", "veth", "peer", "name", "eth0"],
            ["ip", "addr", "add", "10.216.0.11/24", "dev", "ens5"],
            ["ip", "addr", "add", "10.216.0.111/24", "dev", "eth0"],
            ["ip", "link", "set", "ens5", "up"],
        ):
            subprocess.run(["ip", "netns", "exec", name, *command], check=True)
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)


def test_the_interface_holding_the_address_is_found_in_real_ip_output(namespace: str) -> None:
    listed = subprocess.run(
        ["ip", "netns", "exec", namespace, "ip", "-o", "-4", "addr", "show"], capture_output=True, text=True, check=True
    ).stdout
    assert interface_holding("10.216.0.11", listed) == "ens5"
    # An address that only starts the same is another one.
    assert interface_holding("10.216.0.1", listed) is None
    assert interface_holding("10.216.0.111", listed) == "eth0"


def test_an_nspawn_veth_is_named_without_its_peer() -> None:
    # `ip -o -4 addr show` inside a lab machine, as recorded from one.
    listed = (
        "1: lo    inet 127.0.0.1/8 scope host lo\\       valid_lft forever preferred_lft forever\n"
        "2: host0@if731    inet 10.77.0.11/24 brd 10.77.0.255 scope global host0\\       valid_lft forever\n"
    )
    assert interface_holding("10.77.0.11", listed) == "host0"


def test_unset_interfaces_are_left_to_the_node_and_filled_with_the_one_found(tmp_path: Path) -> None:
    settings = network_settings(tmp_path / "s", LAB_NODE)
    assert settings["address"] == "10.216.0.11"
    assert settings["parent_address"]["interface"] is None
    assert settings["vlans"][0]["parent"] is None
    files = files_for("network", "node1", with_interface(settings, "ens5"))
    assert "Name=ens5" in files["10-podium-ens5.network"]
    assert "Address=10.216.0.11/24" in files["10-podium-ens5.network"]
    assert "VLAN=storage" in files["10-podium-ens5.network"]
    assert "10-podium-host0.network" not in files


def test_an_interface_the_stack_names_is_used_as_it_is(tmp_path: Path) -> None:
    named = LAB_NODE.replace("machine: {driver: nspawn}\n  - name: node2", "machine: {driver: nspawn}\n"
                             "    interface: enp1s0\n  - name: node2", 1)
    settings = network_settings(tmp_path / "s", named)
    assert settings["parent_address"]["interface"] == "enp1s0"
    assert settings["vlans"][0]["parent"] == "enp1s0"
    # A VLAN's own parent wins over the node's interface.
    parented = named.replace("id: 200,", "id: 200, parent: bond0,")
    assert network_settings(tmp_path / "p", parented)["vlans"][0]["parent"] == "bond0"


def test_render_shows_the_lab_interface_where_the_role_finds_it(tmp_path: Path) -> None:
    files = files_for("network", "node1", network_settings(tmp_path / "s", LAB_NODE))
    assert "Name=host0" in files["10-podium-host0.network"]


def test_the_role_finds_this_machines_loopback_by_address_and_names_a_missing_one() -> None:
    from roles.network.tasks import _own_interface

    found: list[dict[str, Any]] = []
    settings = {"address": "127.0.0.1", "vlans": [], "bridges": [],
                "parent_address": {"interface": None, "address": "127.0.0.1/8", "gateway": "127.0.0.1"}}
    run_locally(lambda: found.append(_own_interface(settings)))
    assert found[0]["parent_address"]["interface"] == "lo"
    # An address of documentation space that no interface of this machine holds.
    missing = {**settings, "address": "203.0.113.99"}
    with pytest.raises(DeployError, match=r"no interface holds the node's address 203\.0\.113\.99; name it"):
        run_locally(lambda: _own_interface(missing))
