"""What one libvirt machine is made of: names, NICs, domain and volume XML, and its seed disk."""

from __future__ import annotations

import hashlib
import json
import tempfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from podium.commands import tool_output
from podium.drivers.base import LabNetwork, MachineSpec
from podium.drivers.nspawn import hosts_file
from podium.errors import InvalidInput
from podium.lab import network as labnet
from podium.lab.vmimage import SEED_LABEL
from podium.render import render_template

CONSOLE_LOG_DIR = Path("/var/log/libvirt/qemu")
XMLNS = "https://podium.dev/xmlns/libvirt/machine/1"
HOST_KEY_TYPES = ("ed25519", "ecdsa", "rsa")
# The lab NIC's name inside a VM: the same as inside an nspawn machine.
LAB_INTERFACE = labnet.NODE_INTERFACE


# -- names and addresses -----------------------------------------------------


def domain_name(lab: str, node: str) -> str:
    return f"pdm-{lab}-{node}"


def overlay_volume(lab: str, node: str) -> str:
    return f"pdm-{lab}-{node}.qcow2"


def seed_volume(lab: str, node: str) -> str:
    return f"pdm-{lab}-{node}-seed.img"


def data_volume(lab: str, node: str, disk: str) -> str:
    """A declared data disk; the dot keeps it apart from any node's overlay and seed."""
    return f"pdm-{lab}-{node}.{disk}.qcow2"


def mac_address(lab: str, node: str, index: int = 0) -> str:
    """A stable, locally administered MAC (QEMU's 52:54:00 prefix) for NIC `index` of a node."""
    tail = hashlib.sha256(f"{lab}/{node}/{index}".encode()).digest()[:3]
    return "52:54:00:" + ":".join(f"{b:02x}" for b in tail)


@dataclass(frozen=True)
class Interface:
    """One NIC of a VM: the host bridge it joins, its address (CIDR) if static, its MTU."""

    bridge: str
    mac: str
    cidr: str | None = None
    mtu: int | None = None


def interfaces(network: LabNetwork, spec: MachineSpec) -> list[Interface]:
    """The lab NIC, then one per `spec.extra_interfaces` entry.

    An extra interface is written "<bridge>[,<address>/<prefix>][,mtu=<n>]",
    e.g. "br-storage,10.78.0.11/24,mtu=9000" for a storage network.
    """
    nics = [
        Interface(
            labnet.bridge_name(network.lab),
            mac_address(network.lab, spec.name),
            f"{spec.address}/{network.prefixlen}",
        )
    ]
    for index, value in enumerate(spec.extra_interfaces, start=1):
        bridge, *options = [part.strip() for part in value.split(",")]
        cidr: str | None = None
        mtu: int | None = None
        for option in options:
            if option.startswith("mtu=") and option[4:].isdigit():
                mtu = int(option[4:])
            elif "/" in option:
                cidr = option
            else:
                raise InvalidInput(
                    f"extra interface {value!r} of machine {spec.name} has an unknown part "
                    f"{option!r}; write it like br-storage,10.78.0.11/24,mtu=9000."
                )
        if not bridge or len(bridge) > 15:
            raise InvalidInput(
                f"extra interface {value!r} of machine {spec.name} needs a host bridge name "
                "of 1-15 characters first, like br-storage."
            )
        nics.append(Interface(bridge, mac_address(network.lab, spec.name, index), cidr, mtu))
    return nics


def spec_digest(network: LabNetwork, spec: MachineSpec) -> str:
    """What a running machine is compared with: a changed spec needs destroy and re-create."""
    blob = json.dumps({"network": asdict(network), "spec": asdict(spec)}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


# -- what gets written -------------------------------------------------------


def domain_xml(
    network: LabNetwork,
    spec: MachineSpec,
    *,
    kind: str,
    pool: str,
    image_volume: str,
    host_keys: Sequence[str],
) -> str:
    """The libvirt domain of `spec`, booting its overlay volume with the seed disk beside it."""
    hostdevs = []
    for address in spec.pci_passthrough:
        domain, bus, rest = address.split(":")
        slot, function = rest.split(".")
        hostdevs.append({"domain": domain, "bus": bus, "slot": slot, "function": function})
    name = domain_name(network.lab, spec.name)
    return render_template(
        "libvirt/domain.xml.j2",
        domain_type=kind,
        domain=name,
        lab=network.lab,
        node=spec.name,
        address=spec.address,
        xmlns=XMLNS,
        spec_digest=spec_digest(network, spec),
        image_volume=image_volume,
        host_keys=list(host_keys),
        memory_mb=spec.memory_mb,
        cpus=spec.cpus,
        pool=pool,
        overlay=overlay_volume(network.lab, spec.name),
        seed=seed_volume(network.lab, spec.name),
        interfaces=interfaces(network, spec),
        hostdevs=hostdevs,
        # vdc, vdd, …: the system disk is vda, the seed vdb. The serial names the disk inside
        # the VM (/dev/disk/by-id/virtio-<serial>; virtio keeps 20 characters).
        data_disks=[
            {"volume": data_volume(network.lab, spec.name, name), "target": f"vd{chr(ord('c') + i)}",
             "serial": name[:20]}
            for i, (name, _size) in enumerate(spec.disks)
        ],
        console_log=str(CONSOLE_LOG_DIR / f"{name}-console.log"),
    )


def volume_xml(name: str, capacity: int, fmt: str, backing_path: str | None = None) -> str:
    """A volume of Podium's pool: the base disk, a qcow2 overlay on it, or a raw seed."""
    return render_template(
        "libvirt/volume.xml.j2",
        volume=name,
        capacity=capacity,
        format=fmt,
        backing_path=backing_path,
    )


def network_units(network: LabNetwork, spec: MachineSpec) -> dict[str, str]:
    """systemd-networkd files for each NIC, matched by MAC and driver so NIC naming never matters.

    The lab NIC is renamed host0, as in nspawn machines, so the roles see one
    interface name on either kind of machine. The files start with 20-lab so
    that the network role's own 10-podium files win where they name host0,
    and the role's clean-up of stale 10-podium files leaves them alone. The
    driver match keeps VLANs (same MAC, driver 8021q) out of them.
    """
    units = {}
    for index, nic in enumerate(interfaces(network, spec)):
        name = LAB_INTERFACE if index == 0 else f"lab{index}"
        match = ["[Match]", f"MACAddress={nic.mac}", "Driver=virtio_net", ""]
        units[f"etc/systemd/network/20-lab-{name}.link"] = (
            "\n".join([*match, "[Link]", f"Name={name}", *([f"MTUBytes={nic.mtu}"] if nic.mtu else [])]) + "\n"
        )
        lines = [*match]
        if nic.mtu:
            lines += ["[Link]", f"MTUBytes={nic.mtu}", ""]
        lines += ["[Network]", "LinkLocalAddressing=no", "IPv6AcceptRA=no"]
        if nic.cidr:
            lines.append(f"Address={nic.cidr}")
        if index == 0:
            lines.append(f"Gateway={network.gateway}")
        units[f"etc/systemd/network/20-lab-{name}.network"] = "\n".join(lines) + "\n"
    return units


def seed_files(network: LabNetwork, spec: MachineSpec, host_keys: dict[str, str]) -> dict[str, tuple[str, int]]:
    """Path (relative to /) → (content, mode) of everything the seed disk writes into the VM.

    host_keys: file name under /etc/ssh (ssh_host_ed25519_key, …_key.pub) → content.
    """
    files: dict[str, tuple[str, int]] = {
        "etc/hostname": (f"{spec.name}\n", 0o644),
        "etc/hosts": (hosts_file(spec), 0o644),
        "etc/resolv.conf": (labnet.resolv_conf(network), 0o644),
        "etc/apt/sources.list": (labnet.apt_sources(network), 0o644),
        "root/.ssh/authorized_keys": (
            "".join(f"{key.strip()}\n" for key in spec.authorized_keys),
            0o600,
        ),
    }
    for unit, text in network_units(network, spec).items():
        files[unit] = (text, 0o644)
    for file_name, text in host_keys.items():
        files[f"etc/ssh/{file_name}"] = (text, 0o644 if file_name.endswith(".pub") else 0o600)
    return files


def build_seed(files: dict[str, tuple[str, int]], out: Path) -> str:
    """Write the ext4 seed image `out` holding `files`; returns its id (a hash of the files)."""
    seed_id = hashlib.sha256(json.dumps(sorted((k, v[0], v[1]) for k, v in files.items())).encode()).hexdigest()
    with tempfile.TemporaryDirectory(prefix="podium-seed-") as staging:
        top = Path(staging)
        # cp -a of files/. onto / copies the directories' modes too, so they must be right.
        (top / "files").mkdir(mode=0o755)
        for relative, (text, mode) in files.items():
            path = top / "files" / relative
            for parent in reversed(path.relative_to(top / "files").parents[:-1]):
                folder = top / "files" / parent
                if not folder.exists():
                    folder.mkdir()
                    folder.chmod(0o700 if parent.parts[0] == "root" else 0o755)
            path.write_text(text)
            path.chmod(mode)
        (top / "seed-id").write_text(seed_id + "\n")
        tool_output(["mkfs.ext4", "-q", "-F", "-L", SEED_LABEL, "-d", str(top), str(out), "8M"])
    return seed_id


def generate_host_keys(node: str) -> dict[str, str]:
    """Fresh SSH host keys for `node`, made here so the control machine knows them before boot."""
    keys = {}
    with tempfile.TemporaryDirectory(prefix="podium-hostkeys-") as folder:
        for kind in HOST_KEY_TYPES:
            path = Path(folder) / f"ssh_host_{kind}_key"
            tool_output(["ssh-keygen", "-q", "-t", kind, "-N", "", "-C", f"root@{node}", "-f", str(path)])
            keys[path.name] = path.read_text()
            keys[f"{path.name}.pub"] = Path(f"{path}.pub").read_text()
    return keys
