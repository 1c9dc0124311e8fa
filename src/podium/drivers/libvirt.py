"""Machines as libvirt VMs on any hypervisor: a qcow2 overlay of the cached disk, a seed disk."""

from __future__ import annotations

import json
import logging
import re
import shutil
import socket
import tempfile
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Any

from podium.commands import tool_output
from podium.drivers.base import (
    LabNetwork,
    MachineDriver,
    MachineSpec,
    MachineStatus,
    check_layout,
    register,
)
from podium.drivers.libvirt_machine import (
    CONSOLE_LOG_DIR,
    XMLNS,
    build_seed,
    data_volume,
    domain_name,
    domain_xml,
    generate_host_keys,
    overlay_volume,
    seed_files,
    seed_volume,
    spec_digest,
    volume_xml,
)
from podium.drivers.libvirtd import DEFAULT_URI, domain_type, ensure_libvirtd, is_local, libvirt_module
from podium.errors import InvalidInput, PodiumError
from podium.lab import network as labnet

log = logging.getLogger(__name__)

POOL_NAME = "podium"
POOL_DIR = Path("/var/lib/podium/libvirt/pool")
STATE_ROOT = Path("/var/lib/podium/libvirt")
SSH_PORT = 22


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

    def define(self, network: LabNetwork, machines: Sequence[MachineSpec]) -> list[str]:
        """Each machine's disks, seed and domain on the hypervisor, left stopped: for a site that
        starts its VMs itself, or to read back what `ensure` would boot. Returns the domains' names;
        a machine already defined is left as it is."""
        check_layout(network, machines)
        ensure_libvirtd(self.uri)
        with self._connect() as conn:
            pool = self._ensure_pool(conn)
            base = self._ensure_volume(pool, self.image or _default_image(), "qcow2")
            for spec in machines:
                if _lookup(conn, domain_name(network.lab, spec.name)) is None:
                    self._create(conn, pool, base, network, spec, start=False)
        return [domain_name(network.lab, spec.name) for spec in machines]

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
        start: bool = True,
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
        for disk, size in spec.disks:
            name = data_volume(network.lab, spec.name, disk)
            _delete_volume(pool, name)
            pool.createXML(volume_xml(name, size, "qcow2"), 0)
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
        if start:
            dom.create()
        log.info("%s machine %s of lab %s on %s", "started" if start else "defined", spec.name, network.lab, self.uri)

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
            info = json.loads(tool_output(["qemu-img", "info", "--output=json", str(path)]))
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
        """Machines of `lab` by their domains, and by volumes a failed creation left behind."""
        names = set()
        for dom in conn.listAllDomains(0):
            meta = _metadata(dom)
            if meta.get("lab") == [lab] and meta.get("node"):
                names.add(meta["node"][0])
        libvirt = libvirt_module()
        try:
            pool = conn.storagePoolLookupByName(self.pool)
        except libvirt.libvirtError:
            return sorted(names)
        if pool.isActive():
            pool.refresh(0)
            # Lab names have no hyphen, so "pdm-<lab>-" matches no other lab's volumes.
            # A node's data disks (pdm-<lab>-<node>.<disk>.qcow2) name no machine of their own.
            pattern = re.compile(rf"pdm-{lab}-([a-z0-9-]+?)(?:-seed\.img|\.qcow2|\.[A-Za-z0-9._-]+\.qcow2)")
            for volume in pool.listVolumes():
                match = pattern.fullmatch(volume)
                if match:
                    names.add(match.group(1))
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
            data = [v for v in pool.listVolumes() if v.startswith(f"pdm-{lab}-{name}.") and v.endswith(".qcow2")]
            for volume in (overlay_volume(lab, name), seed_volume(lab, name), *data):
                _delete_volume(pool, volume)
        if is_local(self.uri):
            (CONSOLE_LOG_DIR / f"{domain_name(lab, name)}-console.log").unlink(missing_ok=True)

    @contextmanager
    def _connect(self) -> Iterator[Any]:
        libvirt = libvirt_module()
        try:
            conn = libvirt.open(self.uri)
        except libvirt.libvirtError as exc:
            raise PodiumError(f"Could not connect to the hypervisor {self.uri}: {exc.get_error_message()}") from None
        try:
            yield conn
        finally:
            conn.close()


# -- libvirt helpers ---------------------------------------------------------


def _lookup(conn: Any, name: str) -> Any:
    libvirt = libvirt_module()
    try:
        return conn.lookupByName(name)
    except libvirt.libvirtError:
        return None


def _metadata(dom: Any) -> dict[str, list[str]]:
    """Podium's metadata element of a domain as tag → texts; empty for foreign domains."""
    libvirt = libvirt_module()
    try:
        xml = dom.metadata(libvirt.VIR_DOMAIN_METADATA_ELEMENT, XMLNS, 0)
    except libvirt.libvirtError:
        return {}
    found: dict[str, list[str]] = {}
    for child in ET.fromstring(xml):
        found.setdefault(child.tag.split("}")[-1], []).append(child.text or "")
    return found


def _volume(pool: Any, name: str) -> Any:
    libvirt = libvirt_module()
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
    libvirt = libvirt_module()
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
