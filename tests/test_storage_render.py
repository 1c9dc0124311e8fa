"""The storage role's files and GlusterFS commands, from stack settings and from what `gluster`
printed on the labreg lab (tests/data/storage/), plus the firewall openings storage needs.

NFS runs nowhere in this lab: its server needs the kernel's nfsd, which lab machines cannot get.
Measured on the labreg machines (kernel 6.18, no modules for it on the lab host):
`systemctl start nfs-server` fails on its dependency proc-fs-nfsd.mount ("mount: /proc/fs/nfsd:
unknown filesystem type 'nfsd'"), `modprobe nfsd` on the host says "Module nfsd not found in
directory /lib/modules/6.18.44-fc-v669", and a client `mount -t nfs4` says "No such device".
So the nfs driver is proved by what it renders, here."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from roles.storage import gluster

from podium.files import files_for
from podium.plan.components import BY_NAME
from podium.stack import load_stack
from podium.stack.model import Stack
from podium.stack.ports import GLUSTER_BRICK_PORTS, GLUSTERD_PORTS, NFS_PORTS

LABREG = Path(__file__).parent / "stacks" / "labreg"
DATA = Path(__file__).parent / "data" / "storage"


@pytest.fixture(scope="module")
def stack() -> Stack:
    return load_stack(str(LABREG))


def _variant(stack: Stack, **storage: Any) -> Stack:
    assert stack.storage is not None
    return stack.model_copy(update={"storage": stack.storage.model_copy(update=storage)})


def _files(stack: Stack, host: str) -> dict[str, str]:
    return files_for("storage", host, BY_NAME["storage"].settings(stack, host))


def _settings(stack: Stack, host: str) -> dict[str, Any]:
    return BY_NAME["storage"].settings(stack, host)


def test_glusterfs_fstab_mounts_from_the_first_server_with_the_others_as_backup(stack: Stack) -> None:
    assert _files(stack, "ctrl")["fstab"] == (
        "10.77.11.11:/podium /srv/podium glusterfs "
        "defaults,_netdev,backup-volfile-servers=10.77.11.12 0 0\n"
    )


def test_a_gluster_server_mounts_only_after_its_own_glusterd(stack: Stack) -> None:
    line = _files(stack, "node1")["fstab"]
    assert line.split()[3].endswith(",x-systemd.requires=glusterd.service")


def test_glusterd_keeps_brick_ports_inside_the_firewalls_range(stack: Stack) -> None:
    vol = _files(stack, "node1")["glusterd.vol"]
    assert f"option base-port {GLUSTER_BRICK_PORTS[0]}\n" in vol
    assert f"option max-port {GLUSTER_BRICK_PORTS[-1]}\n" in vol
    assert f"transport.socket.listen-port {GLUSTERD_PORTS[0]}\n" in vol


def test_firewall_opens_gluster_ports_on_storage_nodes_to_the_stack_only(stack: Stack) -> None:
    base = BY_NAME["base"].settings
    node1 = {o["port"]: o for o in base(stack, "node1")["openings"]}
    for port in (*GLUSTERD_PORTS, GLUSTER_BRICK_PORTS[0], GLUSTER_BRICK_PORTS[-1]):
        assert node1[port]["sources"] == ["10.77.11.10", "10.77.11.11", "10.77.11.12"], port
    assert GLUSTER_BRICK_PORTS[-1] + 1 not in node1
    ctrl = {o["port"] for o in base(stack, "ctrl")["openings"]}
    assert not ctrl & {*GLUSTERD_PORTS, *GLUSTER_BRICK_PORTS}


def test_nfs_exports_to_every_client_and_clients_mount_nfs4(stack: Stack) -> None:
    nfs = _variant(stack, driver="nfs", nodes=["node1"], replicas=1)
    exports = _files(nfs, "node1")["podium.exports"]
    opts = "(rw,sync,no_subtree_check,root_squash)"
    line = [x for x in exports.splitlines() if x and not x.startswith("#")]
    assert line == [f"/srv/exports/podium 10.77.11.10{opts} 10.77.11.11{opts} 10.77.11.12{opts}"]
    assert _files(nfs, "node2")["podium.exports"] == ""
    assert _files(nfs, "ctrl")["fstab"] == (
        "10.77.11.11:/srv/exports/podium /srv/podium nfs4 rw,hard,noatime,_netdev 0 0\n"
    )
    openings = {o["port"] for o in BY_NAME["base"].settings(nfs, "node1")["openings"]}
    assert set(NFS_PORTS) <= openings


def test_local_storage_is_a_folder_with_no_mount_and_no_ports(stack: Stack) -> None:
    local = _variant(stack, driver="local", nodes=["node1"], replicas=1)
    for host in local.node_names:
        files = _files(local, host)
        assert files["fstab"] == "" and files["podium.exports"] == ""
    openings = {o["port"] for o in BY_NAME["base"].settings(local, "node1")["openings"]}
    assert not openings & {*GLUSTERD_PORTS, *NFS_PORTS}


def test_storage_traffic_uses_the_storage_vlans_addresses(stack: Stack) -> None:
    from podium.stack.sections import Network, Vlan

    vlan = Vlan(name="storage", id=20, nodes=["ctrl", "node1", "node2"], subnet="10.99.0.0/24")
    tagged = _variant(stack, network="storage").model_copy(update={"network": Network(vlans=[vlan])})
    settings = _settings(tagged, "node1")
    assert settings["server_addresses"] == ["10.99.0.2", "10.99.0.3"]
    assert gluster.bricks(settings) == [
        "10.99.0.2:/srv/bricks/podium/brick",
        "10.99.0.3:/srv/bricks/podium/brick",
    ]


def test_volume_create_replicates_over_the_bricks_in_node_order(stack: Stack) -> None:
    settings = _settings(stack, "node1")
    assert gluster.volume_create(settings, force=True) == (
        "gluster --mode=script volume create podium replica 2 "
        "10.77.11.11:/srv/bricks/podium/brick 10.77.11.12:/srv/bricks/podium/brick force"
    )
    single = {**settings, "replicas": 1, "server_addresses": ["10.77.11.11"]}
    assert gluster.volume_create(single, force=False) == (
        "gluster --mode=script volume create podium 10.77.11.11:/srv/bricks/podium/brick"
    )
    assert gluster.volume_start(settings) == "gluster --mode=script volume start podium"


def test_peers_already_in_the_pool_are_not_probed_again(stack: Stack) -> None:
    settings = _settings(stack, "node1")
    pool = (DATA / "pool-list.txt").read_text()
    assert gluster.pool_addresses(pool) == {"10.77.11.12", "localhost"}
    assert gluster.peer_probes(settings, pool) == []
    fresh = pool.splitlines()[0] + "\n" + pool.splitlines()[2] + "\n"
    assert gluster.peer_probes(settings, fresh) == ["gluster peer probe 10.77.11.12"]
    assert gluster.peer_probes(settings, "") == ["gluster peer probe 10.77.11.12"]


def test_volume_info_says_started_stopped_or_absent() -> None:
    info = (DATA / "volume-info.xml").read_text()
    assert gluster.volume_info_started(info) is True
    assert gluster.volume_info_started(info.replace("<statusStr>Started", "<statusStr>Stopped")) is False
    absent = (
        "<cliOutput><opRet>-1</opRet><opErrno>30806</opErrno><opErrstr>Volume does not exist"
        "</opErrstr><volInfo><volumes><count>0</count></volumes></volInfo></cliOutput>"
    )
    assert gluster.volume_info_started(absent) is None
    assert gluster.volume_info_started("") is None


def test_volume_status_lists_bricks_and_skips_self_heal_daemons() -> None:
    status = gluster.volume_status((DATA / "volume-status.xml").read_text())
    assert status.started and status.name == "ptest"
    assert status.bricks == {
        "10.77.11.11:/srv/bricks/ptest/brick": True,
        "10.77.11.12:/srv/bricks/ptest/brick": True,
    }
    assert status.offline == []
    text = (DATA / "volume-status.xml").read_text()
    down = text.replace("<status>1</status>", "<status>0</status>", 1)
    assert gluster.volume_status(down).offline == ["10.77.11.11:/srv/bricks/ptest/brick"]
    missing = "<cliOutput><opRet>-1</opRet><opErrstr>Volume ptest does not exist</opErrstr></cliOutput>"
    assert not gluster.volume_status(missing).started
