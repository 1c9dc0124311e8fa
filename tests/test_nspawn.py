"""Tests of the nspawn machines driver: command line, checks, and real machines end to end."""

from __future__ import annotations

import contextlib
import subprocess
from pathlib import Path

import pytest

from podium.drivers import DRIVERS, get_driver
from podium.drivers.base import LabNetwork, MachineSpec, check_layout
from podium.drivers.nspawn import NspawnDriver, nspawn_command
from podium.errors import InvalidInput
from podium.lab import cgroups
from podium.lab import network as labnet
from tests.fixtures_lab import lab_image, lab_network

__all__ = ["lab_image", "lab_network"]

NET = LabNetwork("lab", "10.77.0.0/24", "10.77.0.1")

# /proc/self/mounts of a hybrid host (v1 controllers, v2 only for tracking), as on this one.
HYBRID_MOUNTS = """\
tmpfs /sys/fs/cgroup tmpfs rw,relatime,mode=755 0 0
cgroup /sys/fs/cgroup/cpu cgroup rw,relatime,cpu 0 0
cgroup /sys/fs/cgroup/cpuacct cgroup rw,relatime,cpuacct 0 0
cgroup /sys/fs/cgroup/memory cgroup rw,relatime,memory 0 0
cgroup /sys/fs/cgroup/pids cgroup rw,relatime,pids 0 0
cgroup /sys/fs/cgroup/systemd cgroup rw,relatime,name=systemd 0 0
cgroup2 /sys/fs/cgroup/unified cgroup2 rw,relatime 0 0
"""
LEGACY_MOUNTS = """\
cgroup /sys/fs/cgroup/systemd cgroup rw,nosuid,xattr,name=systemd 0 0
cgroup /sys/fs/cgroup/cpu,cpuacct cgroup rw,nosuid,cpu,cpuacct 0 0
"""


def test_command_line_boots_without_a_systemd_host_in_the_nodes_namespace() -> None:
    spec = MachineSpec("node1", "10.77.0.11", 2, 2048, ())
    command = nspawn_command("lab", spec, Path("/var/lib/podium/lab/lab/machines/node1/root"))
    assert command[0] == "systemd-nspawn"
    for flag in ("--boot", "--register=no", "--keep-unit", "--hostname=node1"):
        assert flag in command
    assert "--capability=CAP_NET_ADMIN" in command
    assert "--network-namespace-path=/run/netns/pdm-lab-node1" in command
    assert "--directory=/var/lib/podium/lab/lab/machines/node1/root" in command
    assert not any("fuse" in arg for arg in command)


def test_fuse_machines_get_the_device_and_cap_sys_admin() -> None:
    spec = MachineSpec("gluster1", "10.77.0.21", fuse=True)
    command = nspawn_command("lab", spec, Path("/r"))
    assert "--bind=/dev/fuse" in command
    assert "--capability=CAP_NET_ADMIN,CAP_SYS_ADMIN" in command


def test_registry_knows_nspawn_and_lists_valid_names_for_an_unknown_one() -> None:
    assert get_driver("nspawn") is NspawnDriver
    with pytest.raises(InvalidInput, match="nspawn"):
        get_driver("qemu-by-hand")
    assert "nspawn" in DRIVERS


@pytest.mark.parametrize(
    ("make", "field"),
    [
        (lambda: LabNetwork("a-very-long-lab", "10.77.0.0/24", "10.77.0.1"), "lab name"),
        (lambda: LabNetwork("lab", "10.77.0.0/33", "10.77.0.1"), "lab subnet"),
        (lambda: LabNetwork("lab", "10.77.0.0/24", "10.78.0.1"), "lab gateway"),
        (lambda: MachineSpec("Node_1", "10.77.0.11"), "machine name"),
        (lambda: MachineSpec("node1", "10.77.0"), "address of machine node1"),
        (lambda: MachineSpec("node1", "10.77.0.11", cpus=0), "cpus of machine node1"),
    ],
)
def test_bad_declarations_name_the_field(make: object, field: str) -> None:
    with pytest.raises(InvalidInput, match=field):
        make()  # type: ignore[operator]


def test_machine_sets_that_cannot_share_the_network_are_refused() -> None:
    with pytest.raises(InvalidInput, match="already used by the lab gateway"):
        check_layout(NET, [MachineSpec("node1", "10.77.0.1")])
    with pytest.raises(InvalidInput, match="already used by machine node1"):
        check_layout(NET, [MachineSpec("node1", "10.77.0.11"), MachineSpec("node2", "10.77.0.11")])
    with pytest.raises(InvalidInput, match="not a host address"):
        check_layout(NET, [MachineSpec("node1", "10.99.0.11")])
    with pytest.raises(InvalidInput, match="appears twice"):
        check_layout(NET, [MachineSpec("node1", "10.77.0.11"), MachineSpec("node1", "10.77.0.12")])


def test_cgroup_layout_of_a_hybrid_host_tracks_in_both_trees_and_limits_in_v1() -> None:
    layout = cgroups.cgroup_layout(HYBRID_MOUNTS)
    root = Path("/sys/fs/cgroup")
    assert layout.mode == "hybrid"
    assert layout.tracking == (root / "systemd", root / "unified")
    assert (layout.memory, layout.cpu) == (root / "memory", root / "cpu")
    assert cgroups.group_dirs(layout, "lab", "n1") == [
        root / name / "podium/lab/n1" for name in ("systemd", "unified", "memory", "cpu")
    ]


def test_cgroup_layout_of_a_legacy_host_finds_cpu_in_a_joint_hierarchy() -> None:
    layout = cgroups.cgroup_layout(LEGACY_MOUNTS)
    assert layout.mode == "legacy"
    assert layout.cpu == Path("/sys/fs/cgroup/cpu,cpuacct")
    assert layout.memory is None
    assert layout.skipped == ("no cgroup v1 memory hierarchy mounted",)


def test_status_of_a_machine_never_created(tmp_path: Path) -> None:
    [status] = NspawnDriver(state_root=tmp_path).status(NET, ["node9"])
    assert (status.running, status.ssh_ready, status.detail) == (False, False, "not created")


# -- real machines ------------------------------------------------------------


def _ssh(key: Path, known_hosts: Path, address: str, command: str) -> str:
    result = subprocess.run(
        [
            "ssh", "-i", str(key), "-o", f"UserKnownHostsFile={known_hosts}",
            "-o", "StrictHostKeyChecking=yes", "-o", "BatchMode=yes", "-o", "ConnectTimeout=10",
            f"root@{address}", command,
        ],
        capture_output=True, text=True, timeout=90,
    )  # fmt: skip
    assert result.returncode == 0, f"ssh {address} {command!r}: {result.stderr}{result.stdout}"
    return result.stdout.strip()


def _leftovers(
    driver: NspawnDriver, network: LabNetwork, nodes: list[str], whole_lab: bool
) -> list[str]:
    """Everything on the host that still belongs to `nodes` (and to the lab, if `whole_lab`)."""
    found = []
    netns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
    mounts = Path("/proc/mounts").read_text()
    cmdlines = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        with contextlib.suppress(OSError):
            cmdlines.append((cmdline.parent.name, cmdline.read_bytes()))
    for node in nodes:
        folder = str(driver.machine_dir(network.lab, node))
        if labnet.netns_name(network.lab, node) in netns:
            found.append(f"netns of {node}")
        if labnet.veth_name(network.lab, node) in links:
            found.append(f"veth of {node}")
        if folder in mounts:
            found.append(f"overlay mount of {node}")
        found += [f"process {pid} of {node}" for pid, cmd in cmdlines if folder.encode() in cmd]
        found += [
            f"cgroup {p}" for p in Path("/sys/fs/cgroup").glob(f"*/podium/{network.lab}/{node}")
        ]
        if Path(folder).exists():
            found.append(f"state of {node}")
    if whole_lab:
        if f"{labnet.bridge_name(network.lab)}:" in links:
            found.append("bridge")
        nft = ["nft", "list", "table", "ip", labnet.nft_table(network.lab)]
        if subprocess.run(nft, capture_output=True).returncode == 0:
            found.append("nft table")
        found += [f"cgroup {p}" for p in Path("/sys/fs/cgroup").glob(f"*/podium/{network.lab}")]
        if driver.lab_dir(network.lab).exists():
            found.append("lab state folder")
    return found


@pytest.mark.lab
def test_two_machines_boot_serve_ssh_ping_each_other_and_leave_nothing(
    lab_image: Path, lab_network: LabNetwork, tmp_path: Path
) -> None:
    network, nodes = lab_network, ["node1", "node2"]
    driver = NspawnDriver(rootfs=lab_image, boot_timeout=60)
    key = tmp_path / "id_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    prefix = network.gateway.rsplit(".", 1)[0]
    specs = [
        MachineSpec(name, f"{prefix}.{11 + i}", 1, 512, (key.with_suffix(".pub").read_text(),))
        for i, name in enumerate(nodes)
    ]
    try:
        statuses = driver.ensure(network, specs)
        assert [(s.name, s.running, s.ssh_ready) for s in statuses] == [
            (name, True, True) for name in nodes
        ]
        keys = {name: driver.host_keys(network, name) for name in nodes}
        assert keys["node1"] and keys["node2"]
        assert not set(keys["node1"]) & set(keys["node2"]), "machines share SSH host keys"
        known_hosts = tmp_path / "known_hosts"
        known_hosts.write_text(
            "".join(f"{s.address} {line}\n" for s in specs for line in keys[s.name])
        )
        for spec in specs:
            state = _ssh(
                key, known_hosts, spec.address, "systemctl is-system-running --wait || true"
            )
            if state != "running":
                failed = _ssh(key, known_hosts, spec.address, "systemctl --failed --no-legend")
                print(f"{spec.name} is {state}; failed units:\n{failed}")
            assert state in ("running", "degraded"), f"{spec.name} is {state}"
            assert _ssh(key, known_hosts, spec.address, "hostname") == spec.name
        _ssh(key, known_hosts, specs[0].address, f"ping -c 1 -W 2 {specs[1].address}")

        pid_files = [driver.machine_dir(network.lab, n) / "nspawn.pid" for n in nodes]
        pids = [p.read_text() for p in pid_files]
        again = driver.ensure(network, specs)
        assert [p.read_text() for p in pid_files] == pids, "ensure restarted a running machine"
        assert all(s.running and s.ssh_ready for s in again)

        driver.destroy(network, ["node2"])
        node1, node2 = driver.status(network, nodes)
        assert (node1.running, node2.running) == (True, False)
        assert _leftovers(driver, network, ["node2"], whole_lab=False) == []
        assert _leftovers(driver, network, ["node1"], whole_lab=False) != []
    finally:
        driver.destroy(network)
    assert _leftovers(driver, network, nodes, whole_lab=True) == []
