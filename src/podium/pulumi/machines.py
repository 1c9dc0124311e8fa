"""`podium:machines:LibvirtNode`: one libvirt VM of the stack (system disk from the base image,
extra disks, the domain), through the pulumi_libvirt provider."""

from __future__ import annotations

from dataclasses import dataclass

import pulumi
import pulumi_libvirt as libvirt

from podium.stack.nodes import Node
from podium.stack.types import size_bytes

MIB = 1 << 20


@dataclass(frozen=True)
class LibvirtNodeArgs:
    """node: the stack's node (its machine section says how big and where).
    network: the libvirt network its first NIC joins when the node names none.
    pool: the storage pool its volumes go into.

    Example: LibvirtNodeArgs(stack.node("vm-ctrl"), network="podium-hybrid")
    """

    node: Node
    network: str
    pool: str = "default"
    # The base image volume the system disk is a copy-on-write overlay of.
    base_image: str = "debian-12.qcow2"


def _hostdev_xslt(addresses: list[str]) -> str:
    """pulumi_libvirt has no hostdev argument; GPUs are passed through by an XSLT on the XML."""
    devs = []
    for pci in addresses:
        domain, bus, rest = pci.split(":")
        slot, function = rest.split(".")
        devs.append(
            '<hostdev mode="subsystem" type="pci" managed="yes"><source>'
            f'<address domain="0x{domain}" bus="0x{bus}" slot="0x{slot}" function="0x{function}"/>'
            "</source></hostdev>"
        )
    return (
        '<?xml version="1.0"?><xsl:stylesheet version="1.0" '
        'xmlns:xsl="http://www.w3.org/1999/XSL/Transform">'
        '<xsl:template match="@*|node()"><xsl:copy><xsl:apply-templates select="@*|node()"/>'
        '</xsl:copy></xsl:template><xsl:template match="/domain/devices">'
        '<xsl:copy><xsl:apply-templates select="@*|node()"/>'
        + "".join(devs)
        + "</xsl:copy></xsl:template></xsl:stylesheet>"
    )


class LibvirtNode(pulumi.ComponentResource):
    def __init__(self, name: str, args: LibvirtNodeArgs,
                 opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("podium:machines:LibvirtNode", name, None, opts)
        machine = args.node.machine
        assert machine is not None and machine.driver == "libvirt", args.node.name
        child = pulumi.ResourceOptions(parent=self)
        hypervisor = libvirt.Provider(f"{name}-hypervisor", uri=machine.hypervisor or
                                      "qemu:///system", opts=child)
        on_host = pulumi.ResourceOptions(parent=self, provider=hypervisor)
        system = libvirt.Volume(
            f"{name}-disk", name=f"{args.node.name}.qcow2", pool=args.pool, format="qcow2",
            base_volume_name=args.base_image, opts=on_host,
        )
        disks = [{"volume_id": system.id}]
        for disk in machine.disks:
            extra = libvirt.Volume(
                f"{name}-{disk.name}", name=f"{args.node.name}-{disk.name}.qcow2", pool=args.pool,
                format="qcow2", size=size_bytes(disk.size), opts=on_host,
            )
            disks.append({"volume_id": extra.id})
        nics = [
            {"network_name": att.network,
             "addresses": [str(att.address)] if att.address else []}
            for att in machine.networks
        ] or [{"network_name": args.network, "addresses": [str(args.node.address)]}]
        xml = {"xslt": _hostdev_xslt(list(machine.pci_passthrough))} if (
            machine.pci_passthrough) else None
        self.domain = libvirt.Domain(
            f"{name}-domain", name=args.node.name, vcpu=machine.cpus,
            memory=size_bytes(machine.memory) // MIB, disks=disks, network_interfaces=nics,
            autostart=True, running=True, qemu_agent=True, xml=xml, opts=on_host,
        )
        self.address = pulumi.Output.from_input(str(args.node.address))
        self.register_outputs({"name": args.node.name, "address": self.address})
