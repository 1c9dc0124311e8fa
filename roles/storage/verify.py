"""Role storage, proved on each host: the volume is served (GlusterFS: started, every brick
online) and mounted where the stack says, and a file written on one node reads back on the others."""

import secrets

from roles.storage import gluster


def test_010_glusterd_serves_the_volume_with_every_brick_online(host, settings):
    if not (settings["server"] and settings["driver"] == "glusterfs"):
        return
    assert host.service("glusterd").is_running, "glusterd is not running"
    status = gluster.volume_status(host.check_output(f"gluster volume status {settings['volume']} --xml"))
    assert status.started, f"volume {settings['volume']} is not started"
    expected = gluster.bricks(settings)
    assert sorted(status.bricks) == sorted(expected), f"bricks {sorted(status.bricks)} != {expected}"
    assert not status.offline, f"bricks offline: {', '.join(status.offline)}"


def test_020_nfs_server_exports_the_volume(host, settings):
    if not (settings["server"] and settings["driver"] == "nfs"):
        return
    assert host.service("nfs-server").is_running, "nfs-server is not running"
    assert settings["export"] in host.check_output("exportfs -v"), f"{settings['export']} is not exported"


def test_030_mounted_at_the_stacks_path(host, settings):
    mount = settings["mount"]
    assert host.file(mount).is_directory, f"{mount} is missing"
    if not settings["client"] or settings["driver"] == "local":
        return
    fstype = {"glusterfs": "fuse.glusterfs", "nfs": "nfs4"}[settings["driver"]]
    found = host.run(f"findmnt -n -o FSTYPE,SOURCE --mountpoint {mount}").stdout.split()
    assert found[:1] == [fstype], f"{mount} is not a {fstype} mount (found {found or 'nothing'})"
    fstab = host.file("/etc/fstab").content_string
    assert f" {mount} " in fstab, f"{mount} is not in /etc/fstab, so it is not mounted after a reboot"


def test_040_a_file_written_here_reads_back_on_every_other_node(host, settings, node, stack):
    if not settings["client"]:
        return
    mount = settings["mount"]
    me = host.check_output("hostname")
    name = f"{mount}/.podium-verify-{me}-{secrets.token_hex(4)}"
    text = secrets.token_hex(16)
    host.check_output(f"echo {text} > {name}")
    try:
        assert host.check_output(f"cat {name}") == text, f"{name} does not read back on {me}"
        if settings["driver"] == "local":
            return  # a local folder is this node's alone
        clients = stack.storage.clients or stack.node_names
        for peer in clients:
            if peer == me:
                continue
            got = node(peer).run(f"cat {name}")
            assert got.rc == 0 and got.stdout.strip() == text, f"{peer} does not see {name} written on {me}"
    finally:
        host.run(f"rm -f {name}")
