"""What a machines driver is (lab network, machine spec, status) and the name → driver registry."""

from __future__ import annotations

import ipaddress
import re
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import ClassVar

from podium.errors import InvalidInput

# Interface names are limited to 15 bytes by the kernel and the bridge is
# "pdm-<lab>", so a lab name has at most 11 characters.
LAB_NAME = re.compile(r"^[a-z][a-z0-9]{0,10}$")
NODE_NAME = re.compile(r"^[a-z][a-z0-9-]{0,30}[a-z0-9]$|^[a-z]$")
PCI_ADDRESS = re.compile(r"^[0-9a-f]{4}:[0-9a-f]{2}:[0-9a-f]{2}\.[0-7]$")


@dataclass(frozen=True)
class LabNetwork:
    """The host-only network of one lab; `lab` names everything the lab creates on the host."""

    lab: str
    subnet: str
    gateway: str
    # NAT to the outside for the lab subnet; off by default, the nodes reach only the lab host.
    online: bool = False
    # The stack serves its own bundle: no package proxy on the host, and the machines' only
    # apt source is the one role base writes (the stack's mirror).
    mirror: bool = False

    def __post_init__(self) -> None:
        if not LAB_NAME.match(self.lab):
            raise InvalidInput(
                f"lab name {self.lab!r} is not allowed; use 1-11 lowercase letters or digits "
                "starting with a letter (it names the bridge pdm-<lab>)."
            )
        try:
            net = ipaddress.IPv4Network(self.subnet)
        except ValueError:
            raise InvalidInput(
                f"lab subnet {self.subnet!r} is not an IPv4 network; write it like 10.77.0.0/24."
            ) from None
        if net.prefixlen > 29:
            raise InvalidInput(
                f"lab subnet {self.subnet!r} is too small; use a /24 or a /29 at least."
            )
        if _address(self.gateway, "lab gateway") not in net:
            raise InvalidInput(
                f"lab gateway {self.gateway!r} is outside subnet {self.subnet}; "
                "pick an address inside it, like its .1."
            )

    @property
    def prefixlen(self) -> int:
        return ipaddress.IPv4Network(self.subnet).prefixlen


@dataclass(frozen=True)
class MachineSpec:
    """One machine of the lab as the declaration wants it."""

    name: str
    address: str
    cpus: int = 1
    memory_mb: int = 1024
    authorized_keys: tuple[str, ...] = ()
    # Further interfaces (storage or VLAN networks); drivers may ignore them for now.
    extra_interfaces: tuple[str, ...] = ()
    # FUSE and CAP_SYS_ADMIN for GlusterFS clients; off unless a machine needs them.
    fuse: bool = False
    # PCI addresses (0000:65:00.0) of host devices, GPUs mostly, passed through to a VM.
    pci_passthrough: tuple[str, ...] = ()
    # Data disks beside the system disk, (name, size in bytes): empty qcow2 volumes of a VM.
    disks: tuple[tuple[str, int], ...] = ()

    def __post_init__(self) -> None:
        if not NODE_NAME.match(self.name):
            raise InvalidInput(
                f"machine name {self.name!r} is not allowed; use lowercase letters, digits and "
                "hyphens, starting with a letter (at most 32 characters)."
            )
        _address(self.address, f"address of machine {self.name}")
        if self.cpus < 1:
            raise InvalidInput(f"cpus of machine {self.name} is {self.cpus}; use 1 or more.")
        if self.memory_mb < 128:
            raise InvalidInput(
                f"memory_mb of machine {self.name} is {self.memory_mb}; use 128 or more."
            )
        for pci in self.pci_passthrough:
            if not PCI_ADDRESS.match(pci):
                raise InvalidInput(
                    f"pci_passthrough address {pci!r} of machine {self.name} is not a PCI "
                    "address; write it like 0000:65:00.0 (see `lspci -D`)."
                )


@dataclass
class MachineStatus:
    """What a driver found about one machine."""

    name: str
    address: str
    running: bool
    ssh_ready: bool
    driver: str
    detail: str = field(default="")


def check_layout(network: LabNetwork, machines: Sequence[MachineSpec]) -> None:
    """Refuse machine sets that cannot share `network`: duplicate names or clashing addresses."""
    net = ipaddress.IPv4Network(network.subnet)
    seen_names: set[str] = set()
    seen_addresses: dict[str, str] = {network.gateway: "the lab gateway"}
    for spec in machines:
        if spec.name in seen_names:
            raise InvalidInput(
                f"machine name {spec.name!r} appears twice; give each machine its own name."
            )
        seen_names.add(spec.name)
        address = ipaddress.IPv4Address(spec.address)
        if address not in net or address in (net.network_address, net.broadcast_address):
            raise InvalidInput(
                f"address {spec.address} of machine {spec.name} is not a host address of "
                f"lab subnet {network.subnet}; pick one inside it."
            )
        if spec.address in seen_addresses:
            raise InvalidInput(
                f"address {spec.address} of machine {spec.name} is already used by "
                f"{seen_addresses[spec.address]}; give each machine its own address."
            )
        seen_addresses[spec.address] = f"machine {spec.name}"


class MachineDriver(ABC):
    """Creates, reports and removes the machines of one lab on one kind of substrate."""

    name: ClassVar[str]

    @abstractmethod
    def ensure(self, network: LabNetwork, machines: Sequence[MachineSpec]) -> list[MachineStatus]:
        """Make `machines` run on `network` and accept SSH; running matching ones are left alone."""

    @abstractmethod
    def status(self, network: LabNetwork, names: Sequence[str]) -> list[MachineStatus]:
        """Report each named machine, whether or not it exists."""

    @abstractmethod
    def destroy(self, network: LabNetwork, names: Sequence[str] | None = None) -> None:
        """Remove the named machines; with None, every machine of the lab and its network."""

    @abstractmethod
    def host_keys(self, network: LabNetwork, name: str) -> list[str]:
        """The machine's SSH host public keys as "<type> <base64>" lines, for a known_hosts file."""


DRIVERS: dict[str, type[MachineDriver]] = {}


def register(cls: type[MachineDriver]) -> type[MachineDriver]:
    """Class decorator adding a driver to DRIVERS under its `name`."""
    DRIVERS[cls.name] = cls
    return cls


def get_driver(name: str) -> type[MachineDriver]:
    """The driver class registered as `name`; an unknown name lists the valid ones."""
    # Importing the package registers the built-in drivers.
    import podium.drivers  # noqa: F401

    try:
        return DRIVERS[name]
    except KeyError:
        valid = ", ".join(sorted(DRIVERS)) or "none"
        raise InvalidInput(f"machines driver {name!r} is unknown; use one of: {valid}.") from None


def _address(value: str, what: str) -> ipaddress.IPv4Address:
    try:
        return ipaddress.IPv4Address(value)
    except ValueError:
        raise InvalidInput(
            f"{what} {value!r} is not an IPv4 address; write it like 10.77.0.11."
        ) from None
