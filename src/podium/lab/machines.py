"""The machines a stack declares, as the machines layer creates them: each node's spec (size,
data disks, extra networks, passed-through PCI devices) and the hypervisor they are created on."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv4Network

from podium.drivers.base import MachineSpec
from podium.errors import InvalidInput
from podium.stack.model import Stack
from podium.stack.nodes import Node
from podium.stack.types import size_bytes


def machine_specs(stack: Stack, authorized_key: str, fuse: bool = False) -> list[MachineSpec]:
    """One spec per node with a `machine:` section, in stack order."""
    specs = []
    for node in stack.nodes:
        machine = node.machine
        if machine is None:
            continue
        specs.append(
            MachineSpec(
                name=node.name,
                address=str(node.address),
                cpus=machine.cpus,
                memory_mb=size_bytes(machine.memory) // (1 << 20),
                authorized_keys=(authorized_key,),
                extra_interfaces=tuple(_attachments(stack, node)),
                fuse=fuse,
                pci_passthrough=tuple(machine.pci_passthrough),
                disks=tuple((disk.name, size_bytes(disk.size)) for disk in machine.disks),
            )
        )
    return specs


def hypervisor(stack: Stack, default: str) -> str:
    """The libvirt URI the stack's VMs are declared on (`default` where none is declared)."""
    declared = sorted({n.machine.hypervisor for n in stack.nodes if n.machine and n.machine.hypervisor})
    if len(declared) > 1:
        raise InvalidInput(
            f"stack {stack.name}: its machines name several hypervisors ({', '.join(declared)}); "
            "one run creates machines on one hypervisor, so give every machine the same "
            "nodes[].machine.hypervisor"
        )
    return declared[0] if declared else default


def _attachments(stack: Stack, node: Node) -> list[str]:
    """A declared network as the driver writes an extra NIC: "bridge[,address/prefix][,mtu=N]".

    The prefix is the declared subnet holding the address (host network or a VLAN); an address
    in none of them is refused, since the NIC could reach nothing with it."""
    assert node.machine is not None
    subnets = [IPv4Network(str(v.subnet)) for v in stack.network.vlans]
    if stack.host_network:
        subnets.append(IPv4Network(str(stack.host_network.subnet)))
    out = []
    for index, attachment in enumerate(node.machine.networks):
        parts = [attachment.network]
        if attachment.address:
            address = IPv4Address(str(attachment.address))
            holding = [s for s in subnets if address in s]
            if not holding:
                raise InvalidInput(
                    f"nodes.{node.name}.machine.networks[{index}].address {address}: in no subnet the "
                    "stack declares; put it in host_network or a VLAN's subnet"
                )
            parts.append(f"{address}/{holding[0].prefixlen}")
        if attachment.mtu:
            parts.append(f"mtu={attachment.mtu}")
        out.append(",".join(parts))
    return out
