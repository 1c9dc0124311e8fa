"""`podium lab up` / `down`: the stack's machines on this computer, provisioned by the same roles
as production, verified, and a line on how to call the appliance."""

from __future__ import annotations

import os
import signal
import subprocess
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console

from podium.drivers.base import LabNetwork, MachineDriver, MachineSpec, get_driver
from podium.drivers.libvirt import LibvirtDriver
from podium.drivers.nspawn import NspawnDriver
from podium.errors import InvalidInput, PodiumError
from podium.inventory import write_inventory
from podium.lab import conflicts
from podium.lab.apt_proxy import pid_alive, start_apt_proxy, stop_apt_proxy
from podium.lab.machines import hypervisor, machine_specs
from podium.plan.actions import make_plan
from podium.render import REPO
from podium.secrets import StackSecrets
from podium.stack.model import Stack
from podium.stack.versions import load_versions

LAB_STATE = Path("/var/lib/podium/lab")


@dataclass
class LabParts:
    stack: Stack
    network: LabNetwork
    driver: MachineDriver
    specs: list[MachineSpec]


def lab_network(stack: Stack, online: bool = False) -> LabNetwork:
    if stack.host_network is None:
        raise InvalidInput(f"stack {stack.name}: host_network is required for a lab (subnet and gateway)")
    return LabNetwork(
        stack.name,
        str(stack.host_network.subnet),
        str(stack.host_network.gateway),
        online=online,
        mirror=stack.mirror_bundle is not None and not online,
    )


def lab_parts(stack: Stack, machines: str | None = None, online: bool = False) -> LabParts:
    network = lab_network(stack, online)
    created = [n for n in stack.nodes if n.machine is not None]
    if not created:
        raise InvalidInput(f"stack {stack.name}: no node has a machine: section; a lab creates its machines")
    kinds = {n.machine.driver for n in created if n.machine}
    driver_name = machines or (kinds.pop() if len(kinds) == 1 else "nspawn")
    if driver_name == "libvirt":
        from podium.drivers.libvirt import LibvirtDriver
        from podium.drivers.libvirtd import DEFAULT_URI

        # The hypervisor the stack declares for its VMs, this machine's where it declares none.
        driver: MachineDriver = LibvirtDriver(uri=hypervisor(stack, DEFAULT_URI))
    else:
        driver = get_driver(driver_name)()
    # GlusterFS needs FUSE inside the machines that mount it.
    fuse = bool(stack.storage and stack.storage.driver == "glusterfs")
    specs = machine_specs(stack, StackSecrets(stack.name).ssh_public_key, fuse)
    return LabParts(stack, network, driver, specs)


def reserve_network(stack: Stack) -> None:
    """Before `lab up` creates anything (even the stack's secrets): refuse a subnet or bridge
    another lab, link or route holds, then record this stack as the holder of its lab name."""
    network = lab_network(stack)
    conflicts.check_network_free(network, stack_file(stack), LAB_STATE)
    conflicts.claim(network, stack_file(stack), LAB_STATE)


def stack_file(stack: Stack) -> Path:
    return stack.folder / "stack.yaml"


def ensure_bundle(stack: Stack, console: Console) -> None:
    """Build the stack's bundle, or bring it up to date (a current one fetches nothing)."""
    folder = stack.bundle_folder
    if folder is None:
        return
    from podium.bundle.build import build_bundle

    console.print(f"bundle {folder}: building what is missing or stale")
    build_bundle(stack, load_versions(), folder, lab_image=True)


def _bundle_image(parts: LabParts, console: Console) -> None:
    """Offline, machines boot an image debootstrapped from the bundle's apt repository: nspawn
    machines its root file system, VMs a disk made of it with the kernel from the bundle too."""
    folder, driver = parts.stack.bundle_folder, parts.driver
    if not (parts.network.mirror and folder):
        return
    from podium.lab.image import build_rootfs, bundle_recipe

    repository = folder / "apt"
    if isinstance(driver, NspawnDriver) and not driver.rootfs:
        driver.rootfs = build_rootfs(recipe=bundle_recipe(repository), repository=repository, console=console)
    elif isinstance(driver, LibvirtDriver) and not driver.image:
        from podium.lab.vmimage import VmImageRecipe, build_vm_image

        driver.image = build_vm_image(recipe=VmImageRecipe(base=bundle_recipe(repository)),
                                      repository=repository, console=console)


def machines_up(parts: LabParts, console: Console) -> None:
    _bundle_image(parts, console)
    with console.status(f"starting {len(parts.specs)} {parts.driver.name} machines"):
        statuses = parts.driver.ensure(parts.network, parts.specs)
    for status in statuses:
        if not status.ssh_ready:
            raise PodiumError(
                f"machine {status.name} did not come up: {status.detail or 'SSH not answering'}"
            )
    secrets = StackSecrets(parts.stack.name)
    secrets.write_known_hosts(
        {spec.address: parts.driver.host_keys(parts.network, spec.name) for spec in parts.specs}
    )
    start_time_server(parts.network)
    if not parts.network.mirror:
        start_apt_proxy(parts.network)
    console.print(f"[green]✓[/] machines: {', '.join(s.name for s in statuses)}")


def write_lab_inventory(stack: Stack) -> Path:
    actions = make_plan(stack, load_versions())
    return write_inventory(stack, actions, REPO / "inventory" / f"{stack.name}.py")


def lab_down(stack: Stack, console: Console, machines: str | None = None) -> None:
    # Another stack file with the same name may not remove a lab it did not bring up.
    conflicts.check_holder(lab_network(stack), stack_file(stack), LAB_STATE)
    parts = lab_parts(stack, machines)
    stop_time_server(parts.network)
    stop_apt_proxy(parts.network)
    with console.status("removing machines, overlays, namespaces, bridge and NAT rules"):
        parts.driver.destroy(parts.network, None)
    conflicts.release(parts.network, LAB_STATE)
    console.print(f"[green]✓[/] lab {stack.name} removed")


# The lab's machines sync time from the lab host, never from a public pool: a chronyd of the
# lab's own serves the lab subnet from the host's clock, without adjusting it (-x).
def _chrony_paths(network: LabNetwork) -> tuple[Path, Path]:
    folder = LAB_STATE / network.lab
    return folder / "chrony.conf", folder / "chrony.pid"


def start_time_server(network: LabNetwork) -> None:
    conf, pidfile = _chrony_paths(network)
    if pid_alive(pidfile):
        return
    if not Path("/usr/sbin/chronyd").exists():
        raise PodiumError(
            "chronyd is missing on this computer; apt-get install chrony (the lab's time source)"
        )
    conf.parent.mkdir(parents=True, exist_ok=True)
    conf.write_text(
        "\n".join(
            [
                "# The lab's time source: this host's clock, served to the lab subnet only.",
                "local stratum 8",
                f"allow {network.subnet}",
                f"bindaddress {network.gateway}",
                "cmdport 0",
                f"pidfile {pidfile}",
                f"driftfile {conf.parent / 'chrony.drift'}",
                "",
            ]
        ),
        encoding="utf-8",
    )
    subprocess.run(["/usr/sbin/chronyd", "-x", "-f", str(conf)], check=True, capture_output=True)


def stop_time_server(network: LabNetwork) -> None:
    _, pidfile = _chrony_paths(network)
    if pid_alive(pidfile):
        os.kill(int(pidfile.read_text().strip()), signal.SIGTERM)


def print_access(stack: Stack, out: Console) -> None:
    """How to call the appliance: filled in once the gateway component is part of the stack."""
    if stack.gateway is None:
        out.print("gateway: none declared in this stack")
        return
    from podium.lab.access import print_gateway_access

    print_gateway_access(stack, out)
