"""Machines as libvirt VMs on any hypervisor: a qcow2 overlay of the cached disk, a seed disk."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from podium.drivers.base import (
    LabNetwork,
    MachineDriver,
    MachineSpec,
    MachineStatus,
    check_layout,
    register,
)
from podium.drivers.nspawn import hosts_file
from podium.errors import InvalidInput, PodiumError
from podium.lab import network as labnet
from podium.lab.vmimage import SEED_LABEL
from podium.render import render_template

log = logging.getLogger(__name__)

DEFAULT_URI = "qemu:///system"
POOL_NAME = "podium"
POOL_DIR = Path("/var/lib/podium/libvirt/pool")
STATE_ROOT = Path("/var/lib/podium/libvirt")
CONSOLE_LOG_DIR = Path("/var/log/libvirt/qemu")
XMLNS = "https://podium.dev/xmlns/libvirt/machine/1"
# kvm or qemu (TCG); the same variable picks vagrant-libvirt's driver in the Vagrantfile.
DOMAIN_TYPE_ENV = "PODIUM_LIBVIRT_DRIVER"
HOST_KEY_TYPES = ("ed25519", "ecdsa", "rsa")
SSH_PORT = 22
# The lab NIC's name inside a VM: the same as inside an nspawn machine.
LAB_INTERFACE = labnet.NODE_INTERFACE


# -- where and how VMs run ---------------------------------------------------


def is_local(uri: str) -> bool:
    """True when `uri` names the hypervisor on this machine (no host, or localhost)."""
    return urlparse(uri).hostname in (None, "", "localhost", "127.0.0.1")


def domain_type(uri: str = DEFAULT_URI, override: str | None = None) -> str:
    """`kvm` where guests really boot under KVM, `qemu` (TCG emulation) otherwise.

    An explicit `override` or $PODIUM_LIBVIRT_DRIVER wins. Remote hypervisors
    are assumed to run KVM. Locally, /dev/kvm is not enough: a kvm_pvm host
    (a microVM's paravirtual KVM) offers it, but stock guest kernels hang there.
    """
    choice = override or os.environ.get(DOMAIN_TYPE_ENV)
    if choice:
        if choice not in ("kvm", "qemu"):
            raise InvalidInput(
                f"libvirt domain type {choice!r} (from {DOMAIN_TYPE_ENV} or the driver) is not "
                "allowed; use kvm or qemu."
            )
        return choice
    if not is_local(uri):
        return "kvm"
    if Path("/sys/module/kvm_pvm").exists() or not Path("/dev/kvm").exists():
        return "qemu"
    return "kvm"


# libvirtd's parent where Podium starts it: a child subreaper that reaps every
# orphan below it. Where PID 1 reaps nothing (some container and microVM
# inits), each QEMU that libvirtd probes and kills stays a zombie, libvirtd
# waits out its kill timeout on it, and defining one domain takes 80 s.
SUBREAPER = """\
import ctypes, os, subprocess, sys
ctypes.CDLL(None, use_errno=True).prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER
child = subprocess.Popen(sys.argv[1:])
while os.wait()[0] != child.pid:
    pass
"""


def ensure_libvirtd(uri: str = DEFAULT_URI, timeout: float = 30.0) -> None:
    """Start virtlogd and libvirtd here when `uri` is local and nothing answers on it.

    Hosts whose PID 1 is not systemd (containers, microVMs) have no socket
    activation, so the daemons are started directly: virtlogd as a daemon,
    libvirtd in the foreground under SUBREAPER, detached from this process.
    """
    if not is_local(uri) or _answers(uri):
        return
    if os.geteuid() != 0:
        raise PodiumError(f"libvirtd does not answer on {uri}; start it, or run as root.")
    for daemon in ("virtlogd", "libvirtd"):
        if shutil.which(daemon) is None:
            raise PodiumError(
                f"{daemon} is not installed; install it with "
                "`apt-get install -y libvirt-daemon-system qemu-system-x86`."
            )
    if not _daemon_running("virtlogd"):
        subprocess.run(["virtlogd", "--daemon"], capture_output=True)
    if not _daemon_running("libvirtd"):
        # setsid --fork: the supervisor outlives this process and belongs to no terminal.
        subprocess.run(
            ["setsid", "--fork", sys.executable, "-c", SUBREAPER, "libvirtd"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
    deadline = time.monotonic() + timeout
    while not _answers(uri):
        if time.monotonic() > deadline:
            raise PodiumError(f"libvirtd did not answer on {uri} within {timeout:.0f} s.")
        time.sleep(0.2)


# -- names and addresses -----------------------------------------------------


def domain_name(lab: str, node: str) -> str:
    return f"pdm-{lab}-{node}"


def overlay_volume(lab: str, node: str) -> str:
    return f"{lab}-{node}.qcow2"


def seed_volume(lab: str, node: str) -> str:
    return f"{lab}-{node}-seed.img"


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
        "etc/resolv.conf": (labnet.resolv_conf(), 0o644),
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
        _run(["mkfs.ext4", "-q", "-F", "-L", SEED_LABEL, "-d", str(top), str(out), "8M"])
    return seed_id


def generate_host_keys(node: str) -> dict[str, str]:
    """Fresh SSH host keys for `node`, made here so the control machine knows them before boot."""
    keys = {}
    with tempfile.TemporaryDirectory(prefix="podium-hostkeys-") as folder:
        for kind in HOST_KEY_TYPES:
            path = Path(folder) / f"ssh_host_{kind}_key"
            _run(["ssh-keygen", "-q", "-t", kind, "-N", "", "-C", f"root@{node}", "-f", str(path)])
            keys[path.name] = path.read_text()
            keys[f"{path.name}.pub"] = Path(f"{path}.pub").read_text()
    return keys


# -- the driver --------------------------------------------------------------


@register
class LibvirtDriver(MachineDriver):
    """Each machine: a domain booting a qcow2 overlay of the cached VM disk, on the lab bridge.

    uri: the hypervisor, qemu:///system here or qemu+ssh://hv1/system elsewhere.
    image: the bootable qcow2 to back overlays; None builds or reuses the cached one.
    pool, pool_dir: the libvirt storage pool holding base disks, overlays and seeds.
    kind: "kvm" or "qemu"; None picks what boots guests on the hypervisor (see domain_type).
    boot_timeout: seconds to wait for every machine's SSH port.

    Remote hypervisors must already have the bridges the machines join; on a
    local one the lab bridge is made with podium.lab.network.

    Example: `LibvirtDriver().ensure(LabNetwork("lab", "10.77.0.0/24", "10.77.0.1"),
    [MachineSpec("node1", "10.77.0.11", 1, 768, (public_key,))])`
    """

    name = "libvirt"

    def __init__(
        self,
        uri: str = DEFAULT_URI,
        image: Path | None = None,
        pool: str = POOL_NAME,
        pool_dir: Path = POOL_DIR,
        state_root: Path = STATE_ROOT,
        kind: str | None = None,
        boot_timeout: float = 300.0,
    ) -> None:
        self.uri = uri
        self.image = image
        self.pool = pool
        self.pool_dir = pool_dir
        self.state_root = state_root
        self.kind = domain_type(uri, kind)
        self.boot_timeout = boot_timeout

    # -- the driver's verbs ---------------------------------------------------

    def ensure(self, network: LabNetwork, machines: Sequence[MachineSpec]) -> list[MachineStatus]:
        check_layout(network, machines)
        ensure_libvirtd(self.uri)
        with self._connect() as conn:
            to_create, to_start = [], []
            for spec in machines:
                dom = _lookup(conn, domain_name(network.lab, spec.name))
                if dom is None:
                    to_create.append(spec)
                    continue
                found = _metadata(dom).get("spec")
                if found != [spec_digest(network, spec)]:
                    raise InvalidInput(
                        f"machine {spec.name} of lab {network.lab} exists with other settings "
                        "(address, size, keys or interfaces); destroy it first to change them."
                    )
                if not dom.isActive():
                    to_start.append(dom)
            if to_create or to_start:
                self._ensure_network(network)
            if to_create:
                pool = self._ensure_pool(conn)
                image = self.image or _default_image()
                base = self._ensure_volume(pool, image, "qcow2")
                for spec in to_create:
                    self._create(conn, pool, base, network, spec)
            for dom in to_start:
                dom.create()
            self._wait_for_ssh(conn, network, machines)
        return self.status(network, [spec.name for spec in machines])

    def status(self, network: LabNetwork, names: Sequence[str]) -> list[MachineStatus]:
        statuses = []
        with self._connect() as conn:
            for name in names:
                dom = _lookup(conn, domain_name(network.lab, name))
                address = _metadata(dom).get("address", [""])[0] if dom is not None else ""
                running = dom is not None and bool(dom.isActive())
                statuses.append(
                    MachineStatus(
                        name=name,
                        address=address,
                        running=running,
                        ssh_ready=running and bool(address) and _port_open(address, SSH_PORT),
                        driver=self.name,
                        detail="" if dom is not None else "not created",
                    )
                )
        return statuses

    def destroy(self, network: LabNetwork, names: Sequence[str] | None = None) -> None:
        if is_local(self.uri):
            ensure_libvirtd(self.uri)
        with self._connect() as conn:
            targets = list(names) if names is not None else self._machine_names(conn, network.lab)
            for name in targets:
                self._remove_machine(conn, network.lab, name)
        if names is None and is_local(self.uri):
            lab_dir = self.state_root / network.lab
            labnet.remove_network(network, lab_dir)
            shutil.rmtree(lab_dir, ignore_errors=True)

    def host_keys(self, network: LabNetwork, name: str) -> list[str]:
        with self._connect() as conn:
            dom = _lookup(conn, domain_name(network.lab, name))
            keys = _metadata(dom).get("hostkey", []) if dom is not None else []
        if not keys:
            raise PodiumError(
                f"machine {name} of lab {network.lab} has no recorded SSH host keys on "
                f"{self.uri}; create it with `podium lab up --machines libvirt` first."
            )
        return keys

    # -- creating -------------------------------------------------------------

    def _create(
        self,
        conn: Any,
        pool: Any,
        base: Any,
        network: LabNetwork,
        spec: MachineSpec,
    ) -> None:
        host_keys = generate_host_keys(spec.name)
        public = [" ".join(v.split()[:2]) for k, v in sorted(host_keys.items()) if k.endswith(".pub")]
        overlay = overlay_volume(network.lab, spec.name)
        seed = seed_volume(network.lab, spec.name)
        # Volumes a failed earlier attempt left behind are replaced, not reused.
        for stale in (overlay, seed):
            _delete_volume(pool, stale)
        capacity = int(base.info()[1])
        pool.createXML(volume_xml(overlay, capacity, "qcow2", base.path()), 0)
        with tempfile.TemporaryDirectory(prefix="podium-seed-") as folder:
            seed_path = Path(folder) / "seed.img"
            build_seed(seed_files(network, spec, host_keys), seed_path)
            volume = pool.createXML(volume_xml(seed, seed_path.stat().st_size, "raw"), 0)
            _upload(conn, volume, seed_path)
        xml = domain_xml(
            network,
            spec,
            kind=self.kind,
            pool=self.pool,
            image_volume=base.name(),
            host_keys=public,
        )
        dom = conn.defineXML(xml)
        dom.create()
        log.info("started machine %s of lab %s on %s", spec.name, network.lab, self.uri)

    def _ensure_network(self, network: LabNetwork) -> None:
        if not is_local(self.uri):
            return
        lab_dir = self.state_root / network.lab
        record = lab_dir / "network.json"
        if record.exists():
            existing = json.loads(record.read_text())["network"]
            if existing != asdict(network):
                raise InvalidInput(
                    f"lab {network.lab} already exists with subnet {existing['subnet']} and "
                    f"gateway {existing['gateway']}; destroy it first to change them."
                )
        labnet.create_network(network, lab_dir)

    def _ensure_pool(self, conn: Any) -> Any:
        import libvirt

        try:
            pool = conn.storagePoolLookupByName(self.pool)
        except libvirt.libvirtError:
            xml = (
                f"<pool type='dir'><name>{self.pool}</name><target>"
                f"<path>{self.pool_dir}</path><permissions><mode>0711</mode></permissions>"
                "</target></pool>"
            )
            pool = conn.storagePoolDefineXML(xml, 0)
            pool.build(0)
            pool.setAutostart(1)
        if not pool.isActive():
            pool.create(0)
        pool.refresh(0)
        return pool

    def _ensure_volume(self, pool: Any, path: Path, fmt: str) -> Any:
        """A cached image file as a volume of the pool, uploaded once (its name has its hash)."""
        volume = _volume(pool, path.name)
        if volume is not None:
            return volume
        if fmt == "qcow2":
            info = json.loads(_run(["qemu-img", "info", "--output=json", str(path)]))
            capacity = int(info["virtual-size"])
        else:
            capacity = path.stat().st_size
        volume = pool.createXML(volume_xml(path.name, capacity, fmt), 0)
        try:
            _upload(pool.connect(), volume, path)
        except BaseException:
            volume.delete(0)
            raise
        return volume

    def _wait_for_ssh(self, conn: Any, network: LabNetwork, machines: Sequence[MachineSpec]) -> None:
        deadline = time.monotonic() + self.boot_timeout
        waiting = {spec.name: spec.address for spec in machines}
        while waiting:
            for name, address in list(waiting.items()):
                dom = _lookup(conn, domain_name(network.lab, name))
                if dom is None or not dom.isActive():
                    raise PodiumError(
                        f"machine {name} of lab {network.lab} stopped while booting; its console "
                        f"log is {CONSOLE_LOG_DIR / domain_name(network.lab, name)}-console.log "
                        f"on the hypervisor.\n{self._console_tail(network.lab, name)}"
                    )
                if _port_open(address, SSH_PORT):
                    del waiting[name]
            if waiting and time.monotonic() > deadline:
                names = ", ".join(sorted(waiting))
                first = sorted(waiting)[0]
                raise PodiumError(
                    f"machines {names} of lab {network.lab} did not accept SSH within "
                    f"{self.boot_timeout:.0f} s (domain type {self.kind}); console of {first}:\n"
                    + self._console_tail(network.lab, first)
                )
            if waiting:
                time.sleep(0.5)

    def _console_tail(self, lab: str, node: str, lines: int = 20) -> str:
        if not is_local(self.uri):
            return ""
        try:
            text = (CONSOLE_LOG_DIR / f"{domain_name(lab, node)}-console.log").read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    # -- removing -------------------------------------------------------------

    def _machine_names(self, conn: Any, lab: str) -> list[str]:
        names = []
        for dom in conn.listAllDomains(0):
            meta = _metadata(dom)
            if meta.get("lab") == [lab] and meta.get("node"):
                names.append(meta["node"][0])
        return sorted(names)

    def _remove_machine(self, conn: Any, lab: str, name: str) -> None:
        import libvirt

        dom = _lookup(conn, domain_name(lab, name))
        if dom is not None:
            if dom.isActive():
                # A hard stop: the machine's disks are deleted next, so nothing is lost.
                dom.destroy()
            dom.undefineFlags(libvirt.VIR_DOMAIN_UNDEFINE_NVRAM)
        try:
            pool = conn.storagePoolLookupByName(self.pool)
        except libvirt.libvirtError:
            pool = None
        if pool is not None and pool.isActive():
            pool.refresh(0)
            for volume in (overlay_volume(lab, name), seed_volume(lab, name)):
                _delete_volume(pool, volume)
        if is_local(self.uri):
            (CONSOLE_LOG_DIR / f"{domain_name(lab, name)}-console.log").unlink(missing_ok=True)

    @contextmanager
    def _connect(self) -> Iterator[Any]:
        libvirt = _libvirt()
        try:
            conn = libvirt.open(self.uri)
        except libvirt.libvirtError as exc:
            raise PodiumError(f"Could not connect to the hypervisor {self.uri}: {exc.get_error_message()}") from None
        try:
            yield conn
        finally:
            conn.close()


# -- libvirt helpers ---------------------------------------------------------


def _libvirt() -> Any:
    try:
        import libvirt
    except ImportError:
        raise PodiumError(
            "The libvirt machines driver needs libvirt-python; install it with "
            "`pip install 'podium[libvirt]'` (it builds against libvirt-dev and pkg-config)."
        ) from None
    # libvirt prints every error to stderr by default; Podium reports them itself.
    libvirt.registerErrorHandler(lambda _ctx, _err: None, None)
    return libvirt


def _answers(uri: str) -> bool:
    libvirt = _libvirt()
    try:
        libvirt.open(uri).close()
    except libvirt.libvirtError:
        return False
    return True


def _daemon_running(daemon: str) -> bool:
    try:
        pid = int(Path(f"/run/{daemon}.pid").read_text())
        return Path(f"/proc/{pid}/comm").read_text().strip() == daemon
    except (OSError, ValueError):
        return False


def _lookup(conn: Any, name: str) -> Any:
    libvirt = _libvirt()
    try:
        return conn.lookupByName(name)
    except libvirt.libvirtError:
        return None


def _metadata(dom: Any) -> dict[str, list[str]]:
    """Podium's metadata element of a domain as tag → texts; empty for foreign domains."""
    libvirt = _libvirt()
    try:
        xml = dom.metadata(libvirt.VIR_DOMAIN_METADATA_ELEMENT, XMLNS, 0)
    except libvirt.libvirtError:
        return {}
    found: dict[str, list[str]] = {}
    for child in ET.fromstring(xml):
        found.setdefault(child.tag.split("}")[-1], []).append(child.text or "")
    return found


def _volume(pool: Any, name: str) -> Any:
    libvirt = _libvirt()
    try:
        return pool.storageVolLookupByName(name)
    except libvirt.libvirtError:
        return None


def _delete_volume(pool: Any, name: str) -> None:
    volume = _volume(pool, name)
    if volume is not None:
        volume.delete(0)


def _upload(conn: Any, volume: Any, path: Path) -> None:
    """Stream a local file into a volume: the same call works for a remote hypervisor."""
    libvirt = _libvirt()
    size = path.stat().st_size
    stream = conn.newStream(0)
    volume.upload(stream, 0, size, 0)
    with open(path, "rb") as source:
        try:
            stream.sendAll(lambda _stream, nbytes, handle: handle.read(nbytes), source)
            stream.finish()
        except (libvirt.libvirtError, OSError):
            stream.abort()
            raise


def _default_image() -> Path:
    from podium.lab.vmimage import build_vm_image

    return build_vm_image()


def _port_open(address: str, port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((address, port), timeout=timeout):
            return True
    except OSError:
        return False


def _run(command: list[str]) -> str:
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        raise PodiumError(f"`{' '.join(command)}` failed (exit {result.returncode}): {result.stderr.strip()}")
    return result.stdout
