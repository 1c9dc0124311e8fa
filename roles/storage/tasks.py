"""Role storage, its verbs: deploy, check, remove."""

import shlex
from collections.abc import Callable
from io import StringIO
from typing import Any

from pyinfra import host
from pyinfra.api import deploy as pyinfra_deploy
from pyinfra.api.exceptions import DeployError
from pyinfra.operations import apt, files, server, systemd

from podium.files import files_for
from podium.pinned import node_versions
from roles import checks
from roles.storage import gluster
from roles.storage.defaults import DEFAULTS

FSTAB_MARKER = "# {mark} podium storage"


def package(name: str) -> str:
    """`name=version` as stacks/versions.yaml pins it for the host's storage version."""
    return node_versions().pinned("storage", [name])[0]


def _when(flag: bool) -> Callable[[], bool]:
    return lambda: flag


@pyinfra_deploy("storage: deploy", data_defaults=DEFAULTS)
def deploy() -> None:
    """Servers first, then mounts.

    Every host adds the same operations in the same order, the ones that do not apply to it
    switched off with `_if`: pyinfra's API mode lines operations up across hosts by their
    index, and the mounts on client-only nodes must not run before the servers' volume.
    """
    settings = host.data.podium_storage
    rendered = files_for("storage", host.name, settings)
    driver = settings["driver"]
    _gluster_server(settings, rendered, settings["server"] and driver == "glusterfs")
    _nfs_server(settings, rendered, settings["server"] and driver == "nfs")
    _mount(settings, rendered, settings["client"])


def _gluster_server(settings: dict[str, Any], rendered: dict[str, str], here: bool) -> None:
    on = _when(here)
    apt.packages(
        name="Install GlusterFS server",
        packages=[package("glusterfs-server"), package("attr")],
        update=True,
        cache_time=24 * 3600,
        _if=on,
    )
    vol = files.put(
        name="Configure glusterd (brick ports)",
        src=StringIO(rendered["glusterd.vol"]),
        dest=host.data.storage_glusterd_vol,
        mode="644",
        _if=on,
    )
    systemd.service(
        name="Restart glusterd after its configuration changed",
        service="glusterd",
        running=True,
        enabled=True,
        restarted=True,
        _if=[on, vol.did_change],
    )
    systemd.service(name="Run glusterd", service="glusterd", running=True, enabled=True, _if=on)

    device = host.data.storage_brick_device if here else None
    folder = settings["brick"].rsplit("/", 1)[0]
    fs = checks.output(f"blkid -o value -s TYPE {shlex.quote(device)}").strip() if device else ""
    if fs not in ("", "xfs"):
        raise DeployError(
            f"{host.name}: brick disk {device} holds a {fs} file system; "
            "give a blank disk or one formatted XFS"
        )
    server.shell(
        name="Format the brick disk (XFS)",
        commands=[f"mkfs.xfs -i size=512 {shlex.quote(device or '')}"],
        _if=_when(bool(device) and not fs),
    )
    # Only the folder above the brick: gluster creates the brick itself and marks it with its
    # volume id, so a brick that went missing is noticed instead of silently recreated.
    files.directory(name="Brick folder", path=folder, _if=on)
    files.line(
        name="Mount the brick disk at boot",
        path="/etc/fstab",
        line=f"^{device} {folder} ",
        replace=f"{device} {folder} xfs defaults,noatime 0 0",
        _if=_when(bool(device)),
    )
    mounted = bool(device) and bool(checks.output(f"findmnt -n --mountpoint {shlex.quote(folder)}").strip())
    server.shell(
        name="Mount the brick disk",
        commands=[f"findmnt --mountpoint {shlex.quote(folder)} >/dev/null || mount {shlex.quote(folder)}"],
        _if=_when(bool(device) and not mounted),
    )

    # The first server forms the pool and creates the volume, once every server runs glusterd.
    first = here and host.name == settings["servers"][0]
    probes = gluster.peer_probes(settings, checks.output("gluster pool list")) if first else []
    server.shell(
        name="Add the storage nodes to the pool",
        commands=probes or ["true"],
        _if=_when(bool(probes)),
    )
    info = checks.output(f"gluster volume info {shlex.quote(settings['volume'])} --xml") if first else ""
    started = gluster.volume_info_started(info)
    server.shell(
        name=f"Create the volume {settings['volume']}",
        commands=[gluster.wait_for_peers(settings), gluster.volume_create(settings, force=not device)],
        _if=_when(first and started is None),
    )
    server.shell(
        name=f"Start the volume {settings['volume']}",
        commands=[gluster.volume_start(settings)],
        _if=_when(first and not started),
    )


def _nfs_server(settings: dict[str, Any], rendered: dict[str, str], here: bool) -> None:
    # The kernel NFS server needs the host kernel's nfsd, which a container cannot load: the
    # lab uses glusterfs or local (see tests/test_storage_render.py for what was tried).
    on = _when(here)
    apt.packages(
        name="Install the NFS server",
        packages=[package("nfs-kernel-server")],
        update=True,
        cache_time=24 * 3600,
        _if=on,
    )
    files.directory(name="Exported folder", path=settings["export"], mode="755", _if=on)
    exports = files.put(
        name="Export the volume to the client nodes",
        src=StringIO(rendered["podium.exports"]),
        dest=host.data.storage_exports_file,
        mode="644",
        create_remote_dir=True,
        _if=on,
    )
    systemd.service(name="Run the NFS server", service="nfs-server", running=True, enabled=True, _if=on)
    server.shell(name="Publish the exports", commands=["exportfs -ra"], _if=[on, exports.did_change])


def _mount(settings: dict[str, Any], rendered: dict[str, str], here: bool) -> None:
    mount = settings["mount"]
    driver = settings["driver"]
    client = {"glusterfs": "glusterfs-client", "nfs": "nfs-common"}.get(driver)
    shared = here and client is not None
    apt.packages(
        name="Install the storage client",
        packages=[package(client or "glusterfs-client")],
        update=True,
        cache_time=24 * 3600,
        _if=_when(shared and not (driver == "glusterfs" and settings["server"])),
    )
    files.directory(name=f"Mount point {mount}", path=mount, _if=_when(here))
    fstab = files.block(
        name=f"Mount {mount} at boot",
        path="/etc/fstab",
        content=rendered["fstab"].strip() or "# nothing",
        marker=FSTAB_MARKER,
        _if=_when(shared),
    )
    source = checks.output(f"findmnt -n -o SOURCE --mountpoint {shlex.quote(mount)}").strip() if shared else ""
    wanted = rendered["fstab"].split()[0] if shared else ""
    changed = shared and (source != wanted or fstab.will_change)
    commands = [f"umount {shlex.quote(mount)}"] if source and changed else []
    commands += ["systemctl daemon-reload", f"mount {shlex.quote(mount)}"]
    server.shell(name=f"Mount {mount}", commands=commands, _if=_when(changed))
    if here and not shared:
        host.noop(f"{mount} is a folder of this node (storage driver local)")


@pyinfra_deploy("storage: check", data_defaults=DEFAULTS)
def check() -> None:
    settings = host.data.podium_storage
    mount = shlex.quote(settings["mount"])
    commands = [f"test -d {mount}"]
    if settings["client"] and settings["driver"] != "local":
        commands.append(f"findmnt --mountpoint {mount} >/dev/null")
    checks.passes(name="The volume is mounted", commands=commands, proves=f"{mount} present and mounted")


@pyinfra_deploy("storage: remove", data_defaults=DEFAULTS)
def remove() -> None:
    """Unmount and stop serving the volume; the data stays in the bricks or the export."""
    settings = host.data.podium_storage
    mount = settings["mount"]
    if settings["driver"] != "local":
        server.shell(
            name=f"Unmount {mount}",
            commands=[f"if findmnt --mountpoint {shlex.quote(mount)} >/dev/null; then umount {shlex.quote(mount)}; fi"],
        )
        files.block(
            name=f"Stop mounting {mount} at boot",
            path="/etc/fstab",
            marker=FSTAB_MARKER,
            present=False,
        )
    if settings["server"] and settings["driver"] == "glusterfs" and host.name == settings["servers"][0]:
        volume = shlex.quote(settings["volume"])
        server.shell(
            name=f"Stop and delete the volume {volume} (bricks keep the data)",
            commands=[
                f"if gluster volume info {volume} >/dev/null 2>&1; then "
                f"gluster --mode=script volume stop {volume} force; "
                f"gluster --mode=script volume delete {volume}; fi"
            ],
        )
    if settings["server"] and settings["driver"] == "nfs":
        files.file(name="Stop exporting the volume", path=host.data.storage_exports_file, present=False)
        server.shell(name="Publish the exports", commands=["exportfs -ra"])
