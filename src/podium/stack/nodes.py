"""The machines of a stack: existing bare metal, or machines a driver creates."""

from __future__ import annotations

from ipaddress import IPv4Network
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from podium.stack.types import (
    Address,
    LabelKey,
    LabelValue,
    LocalPath,
    Name,
    Size,
    Subnet,
    Url,
    User,
    Word,
)


class Strict(BaseModel):
    """Every stack section refuses keys it does not know, so a typo never passes silently."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=False)


class Ssh(Strict):
    user: User = "root"
    port: Annotated[int, Field(ge=1, le=65535)] = 22
    # Private key on the control machine; the lab generates its own when unset.
    key: LocalPath | None = None


class Disk(Strict):
    name: Name
    size: Size


class NetworkAttachment(Strict):
    # A libvirt network or host bridge the machine's NIC joins.
    network: Word
    address: Address | None = None
    mtu: Annotated[int, Field(ge=576, le=9216)] | None = None


class Machine(Strict):
    """A machine Podium creates: an nspawn container in the lab or a libvirt VM."""

    driver: Literal["nspawn", "libvirt"]
    # libvirt URI of the hypervisor, e.g. qemu:///system or qemu+ssh://hv1/system.
    hypervisor: Url | None = None
    cpus: Annotated[int, Field(ge=1, le=512)] = 1
    memory: Size = "1GiB"
    disks: list[Disk] = []
    image: Word = "debian-12"
    networks: list[NetworkAttachment] = []
    # PCI addresses of GPUs passed through to a VM (hostdev).
    pci_passthrough: list[Annotated[str, Field(pattern=r"^[0-9a-f]{4}:[0-9a-f]{2}:[0-9a-f]{2}\.[0-7]$")]] = []


class Node(Strict):
    name: Name
    address: Address
    ssh: Ssh = Ssh()
    labels: dict[LabelKey, LabelValue] = {}
    gpus: Annotated[int, Field(ge=0, le=64)] = 0
    # NVSwitch systems need fabric manager next to the driver.
    nvswitch: bool = False
    # None means existing bare metal reached over SSH.
    machine: Machine | None = None
    # The node's own interface (its address, the VLANs' parent); the network role finds the one
    # holding the node's address when unset, since names differ (host0, ens5, eno1).
    interface: Word | None = None


class HostNetwork(Strict):
    """The host-only network the machines layer builds for the machines it creates."""

    subnet: Subnet
    gateway: Address

    @field_validator("subnet", mode="before")
    @classmethod
    def _strict_subnet(cls, value: object) -> object:
        if isinstance(value, str):
            IPv4Network(value, strict=True)
        return value
