"""Tests of the libvirt machines driver and its machines: XML, seed disk, and one real VM."""

from __future__ import annotations

import re
import shutil
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from podium.drivers import get_driver
from podium.drivers.base import LabNetwork, MachineSpec
from podium.drivers.libvirt import LibvirtDriver
from podium.drivers.libvirt_machine import (
    build_seed,
    domain_name,
    domain_xml,
    interfaces,
    mac_address,
    network_units,
    overlay_volume,
    seed_files,
    seed_volume,
    volume_xml,
)
from podium.drivers.libvirtd import domain_type, ensure_libvirtd
from podium.drivers.nspawn import NspawnDriver
from podium.errors import InvalidInput
from podium.lab.vmimage import GRUB_CFG, ROOT_LABEL, SEED_LABEL, VmImageRecipe, vm_image_path
from tests.fixtures_vm import vm_image, vm_network

__all__ = ["vm_image", "vm_network"]

NET = LabNetwork("lab", "10.77.0.0/24", "10.77.0.1")
KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx test"
GPU_NODE = MachineSpec(
    "gpu1",
    "10.77.0.21",
    cpus=4,
    memory_mb=2048,
    authorized_keys=(KEY,),
    extra_interfaces=("br-storage,10.78.0.21/24,mtu=9000",),
    pci_passthrough=("0000:65:00.0",),
)


def _validate(xml: str, kind: str, tmp_path: Path) -> None:
    """Check `xml` against libvirt's own RelaxNG schema when virt-xml-validate is installed."""
    if shutil.which("virt-xml-validate") is None:
        return
    path = tmp_path / f"{kind}.xml"
    path.write_text(xml)
    result = subprocess.run(["virt-xml-validate", str(path), kind], capture_output=True, text=True)
    assert result.returncode == 0, f"{kind} XML fails libvirt's schema: {result.stderr}"


def _render(kind: str) -> ET.Element:
    xml = domain_xml(
        NET,
        GPU_NODE,
        kind=kind,
        pool="podium",
        image_volume="debian-bookworm-vm-0123456789abcdef.qcow2",
        host_keys=["ssh-ed25519 AAAAhostkey"],
    )
    return ET.fromstring(xml)


# -- domain XML ----------------------------------------------------------------


def test_tcg_domain_boots_the_overlay_with_the_seed_beside_it(tmp_path: Path) -> None:
    xml = domain_xml(NET, GPU_NODE, kind="qemu", pool="podium", image_volume="base.qcow2", host_keys=[])
    _validate(xml, "domain", tmp_path)
    root = ET.fromstring(xml)
    assert root.get("type") == "qemu"
    assert root.findtext("name") == "pdm-lab-gpu1"
    # host-passthrough needs KVM; under TCG it would refuse to start.
    assert root.find("cpu") is None
    assert root.findtext("memory") == "2048" and root.find("memory").get("unit") == "MiB"  # type: ignore[union-attr]
    assert root.findtext("vcpu") == "4"
    disks = root.findall("devices/disk")
    assert [(d.find("source").get("volume"), d.find("driver").get("type")) for d in disks] == [  # type: ignore[union-attr]
        ("pdm-lab-gpu1.qcow2", "qcow2"),
        ("pdm-lab-gpu1-seed.img", "raw"),
    ]
    assert disks[1].find("readonly") is not None, "the seed disk must be read-only"


def test_kvm_domain_passes_the_host_cpu_through(tmp_path: Path) -> None:
    root = _render("kvm")
    _validate(ET.tostring(root, encoding="unicode"), "domain", tmp_path)
    assert root.get("type") == "kvm"
    assert root.find("cpu").get("mode") == "host-passthrough"  # type: ignore[union-attr]
    # The disk boots by itself, through GRUB, under KVM and TCG alike.
    assert root.find("os/boot").get("dev") == "hd"  # type: ignore[union-attr]


def test_nics_join_the_lab_bridge_and_the_storage_bridge_with_stable_macs() -> None:
    nics = _render("qemu").findall("devices/interface")
    assert [n.get("type") for n in nics] == ["bridge", "bridge"]
    assert [n.find("source").get("bridge") for n in nics] == ["pdm-lab", "br-storage"]  # type: ignore[union-attr]
    assert [n.find("mac").get("address") for n in nics] == [  # type: ignore[union-attr]
        mac_address("lab", "gpu1", 0),
        mac_address("lab", "gpu1", 1),
    ]
    assert nics[0].find("mtu") is None
    assert nics[1].find("mtu").get("size") == "9000"  # type: ignore[union-attr]


def test_gpus_are_passed_through_as_pci_hostdevs() -> None:
    hostdevs = _render("qemu").findall("devices/hostdev")
    assert len(hostdevs) == 1
    address = hostdevs[0].find("source/address")
    assert address is not None
    assert (address.get("domain"), address.get("bus"), address.get("slot")) == (
        "0x0000",
        "0x65",
        "0x00",
    )
    assert address.get("function") == "0x0"
    assert hostdevs[0].get("managed") == "yes"


def test_metadata_records_lab_node_address_and_host_keys() -> None:
    ns = {"p": "https://podium.dev/xmlns/libvirt/machine/1"}
    meta = _render("qemu").find("metadata/p:machine", ns)
    assert meta is not None
    assert meta.findtext("p:lab", namespaces=ns) == "lab"
    assert meta.findtext("p:node", namespaces=ns) == "gpu1"
    assert meta.findtext("p:address", namespaces=ns) == "10.77.0.21"
    assert [k.text for k in meta.findall("p:hostkey", ns)] == ["ssh-ed25519 AAAAhostkey"]


def test_macs_differ_between_nodes_labs_and_nics() -> None:
    macs = {mac_address(lab, node, i) for lab in ("a", "b") for node in ("n1", "n2") for i in (0, 1)}
    assert len(macs) == 8
    assert all(mac.startswith("52:54:00:") for mac in macs)


# -- domain type -------------------------------------------------------------


def test_domain_type_override_wins_and_is_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PODIUM_LIBVIRT_DRIVER", raising=False)
    assert domain_type("qemu:///system", "kvm") == "kvm"
    monkeypatch.setenv("PODIUM_LIBVIRT_DRIVER", "qemu")
    assert domain_type("qemu+ssh://hv1/system") == "qemu"
    monkeypatch.setenv("PODIUM_LIBVIRT_DRIVER", "xen")
    with pytest.raises(InvalidInput, match="PODIUM_LIBVIRT_DRIVER"):
        domain_type()


def test_domain_type_detects_what_boots_here(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PODIUM_LIBVIRT_DRIVER", raising=False)
    # Production hypervisors are reached over SSH and run KVM.
    assert domain_type("qemu+ssh://hv1/system") == "kvm"
    pvm = Path("/sys/module/kvm_pvm").exists()
    expected = "qemu" if pvm or not Path("/dev/kvm").exists() else "kvm"
    assert domain_type("qemu:///system") == expected


# -- declarations ------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "field"),
    [
        ("br-storage,10.78.0.21/24,speed=10g", "unknown part"),
        (",10.78.0.21/24", "host bridge name"),
        ("a-bridge-name-too-long,10.78.0.21/24", "host bridge name"),
    ],
)
def test_bad_extra_interfaces_name_the_machine_and_the_fix(value: str, field: str) -> None:
    spec = MachineSpec("node1", "10.77.0.11", extra_interfaces=(value,))
    with pytest.raises(InvalidInput, match=f"node1.*{field}"):
        interfaces(NET, spec)


def test_bad_pci_address_is_refused_and_nspawn_specs_are_unchanged() -> None:
    with pytest.raises(InvalidInput, match="pci_passthrough address '65:00.0' of machine gpu1"):
        MachineSpec("gpu1", "10.77.0.21", pci_passthrough=("65:00.0",))
    assert MachineSpec("node1", "10.77.0.11").pci_passthrough == ()


def test_registry_knows_both_machine_drivers() -> None:
    assert get_driver("libvirt") is LibvirtDriver
    assert get_driver("nspawn") is NspawnDriver


# -- volumes and seed --------------------------------------------------------


def test_overlay_volume_is_qcow2_backed_by_the_base_disk(tmp_path: Path) -> None:
    xml = volume_xml("lab-node1.qcow2", 4 * 2**30, "qcow2", "/var/lib/podium/libvirt/pool/b.qcow2")
    _validate(xml, "storagevol", tmp_path)
    root = ET.fromstring(xml)
    assert root.find("target/format").get("type") == "qcow2"  # type: ignore[union-attr]
    assert root.findtext("backingStore/path") == "/var/lib/podium/libvirt/pool/b.qcow2"
    assert root.find("backingStore/format").get("type") == "qcow2"  # type: ignore[union-attr]
    assert root.findtext("target/permissions/mode") == "0600"
    seed = ET.fromstring(volume_xml("lab-node1-seed.img", 8 * 2**20, "raw"))
    assert seed.find("backingStore") is None


def test_network_units_give_the_lab_nic_its_address_and_gateway() -> None:
    units = network_units(NET, GPU_NODE)
    lab = units["etc/systemd/network/20-lab-host0.network"]
    assert f"MACAddress={mac_address('lab', 'gpu1', 0)}" in lab
    assert "Address=10.77.0.21/24" in lab and "Gateway=10.77.0.1" in lab
    storage = units["etc/systemd/network/20-lab-lab1.network"]
    assert "Address=10.78.0.21/24" in storage and "MTUBytes=9000" in storage
    assert "Gateway" not in storage
    # The lab NIC is host0 in a VM too, and VLANs on it (same MAC) keep their own names.
    link = units["etc/systemd/network/20-lab-host0.link"]
    assert "Name=host0" in link and "Driver=virtio_net" in link
    assert all(not name.startswith("etc/systemd/network/10-podium") for name in units)


def _debugfs(image: Path, request: str) -> str:
    result = subprocess.run(["debugfs", "-R", request, str(image)], capture_output=True, text=True, check=True)
    return result.stdout


def test_seed_disk_is_an_ext4_labelled_podium_seed_holding_the_machine_identity(
    tmp_path: Path,
) -> None:
    if shutil.which("debugfs") is None:
        pytest.skip("debugfs is not installed; it reads the seed image (apt-get install e2fsprogs)")
    host_keys = {
        "ssh_host_ed25519_key": "-----BEGIN OPENSSH PRIVATE KEY-----\nx\n",
        "ssh_host_ed25519_key.pub": "ssh-ed25519 AAAAhost root@gpu1\n",
    }
    seed = tmp_path / "seed.img"
    seed_id = build_seed(seed_files(NET, GPU_NODE, host_keys), seed)
    label = subprocess.run(["e2label", str(seed)], capture_output=True, text=True, check=True)
    assert label.stdout.strip() == SEED_LABEL
    assert _debugfs(seed, "cat /seed-id").strip() == seed_id
    assert _debugfs(seed, "cat /files/etc/hostname") == "gpu1\n"
    assert _debugfs(seed, "cat /files/root/.ssh/authorized_keys") == KEY + "\n"
    # Modes survive into the VM through `cp -a`: private keys and /root stay closed.
    assert "Mode:  0600" in _debugfs(seed, "stat /files/etc/ssh/ssh_host_ed25519_key")
    assert "Mode:  0644" in _debugfs(seed, "stat /files/etc/ssh/ssh_host_ed25519_key.pub")
    assert "Mode:  0700" in _debugfs(seed, "stat /files/root")
    assert "Mode:  0755" in _debugfs(seed, "stat /files/etc")
    unit = _debugfs(seed, "cat /files/etc/systemd/network/20-lab-host0.network")
    assert "Address=10.77.0.21/24" in unit
    # Same files, same id: the VM applies a seed once, and again only when it changed.
    assert build_seed(seed_files(NET, GPU_NODE, host_keys), tmp_path / "again.img") == seed_id


# -- the image recipe ----------------------------------------------------------


def test_vm_image_is_cached_by_recipe_and_boots_by_label() -> None:
    default = VmImageRecipe()
    assert vm_image_path(Path("/c"), default) == Path("/c") / default.file_name()
    bigger = VmImageRecipe(disk_gib=8)
    assert bigger.digest() != default.digest()
    assert VmImageRecipe(packages=(*default.packages, "vim")).digest() != default.digest()
    # No loop device names reach the boot config: the builder has no udev.
    assert f"root=LABEL={ROOT_LABEL}" in GRUB_CFG and "/dev/loop" not in GRUB_CFG
    assert f"--label {ROOT_LABEL}" in GRUB_CFG


# -- one real VM -----------------------------------------------------------------


def _ssh(key: Path, known_hosts: Path, address: str, command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            "ssh",
            "-i",
            str(key),
            "-o",
            "BatchMode=yes",
            "-o",
            "StrictHostKeyChecking=yes",
            "-o",
            f"UserKnownHostsFile={known_hosts}",
            "-o",
            "ConnectTimeout=10",
            f"root@{address}",
            command,
        ],
        capture_output=True,
        text=True,
        timeout=180,
    )


def _leftovers(driver: LibvirtDriver, network: LabNetwork, node: str) -> list[str]:
    found = []
    if (
        subprocess.run(
            ["virsh", "-c", driver.uri, "dominfo", domain_name(network.lab, node)],
            capture_output=True,
        ).returncode
        == 0
    ):
        found.append("domain")
    vols = subprocess.run(["virsh", "-c", driver.uri, "vol-list", driver.pool], capture_output=True, text=True).stdout
    found += [f"volume {v}" for v in (overlay_volume(network.lab, node), seed_volume(network.lab, node)) if v in vols]
    if subprocess.run(["ip", "link", "show", f"pdm-{network.lab}"], capture_output=True).returncode == 0:
        found.append("bridge")
    return found


def test_destroy_finds_volumes_that_a_failed_creation_left_behind(vm_network: LabNetwork) -> None:
    import libvirt

    driver = LibvirtDriver()
    ensure_libvirtd(driver.uri)
    conn = libvirt.open(driver.uri)
    try:
        pool = driver._ensure_pool(conn)
        ghost = overlay_volume(vm_network.lab, "ghost")
        pool.createXML(volume_xml(ghost, 2**20, "raw"), 0)
        other = overlay_volume(vm_network.lab + "x", "ghost")
        pool.createXML(volume_xml(other, 2**20, "raw"), 0)
        try:
            driver.destroy(vm_network, None)
            names = pool.listVolumes()
            assert ghost not in names
            # Another lab's volumes, and the base images, are not this lab's to remove.
            assert other in names
        finally:
            for name in (ghost, other):
                if name in pool.listVolumes():
                    pool.storageVolLookupByName(name).delete(0)
    finally:
        conn.close()


@pytest.mark.vm
def test_a_vm_boots_on_its_lab_bridge_and_answers_ssh_with_its_injected_host_key(
    vm_image: Path, vm_network: LabNetwork, tmp_path: Path
) -> None:
    key = tmp_path / "id_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    prefix = vm_network.gateway.rsplit(".", 1)[0]
    spec = MachineSpec("vm1", f"{prefix}.10", 1, 640, (Path(f"{key}.pub").read_text().strip(),))
    driver = LibvirtDriver(image=vm_image)
    try:
        [status] = driver.ensure(vm_network, [spec])
        assert status.running and status.ssh_ready, status
        known_hosts = tmp_path / "known_hosts"
        known_hosts.write_text("".join(f"{spec.address} {k}\n" for k in driver.host_keys(vm_network, "vm1")))
        hostname = _ssh(key, known_hosts, spec.address, "hostname")
        assert hostname.returncode == 0, hostname.stderr
        assert hostname.stdout.strip() == "vm1"
        addresses = _ssh(key, known_hosts, spec.address, "ip -o -4 addr show dev host0")
        assert f"inet {spec.address}/24" in addresses.stdout, addresses.stdout + addresses.stderr
        state = _ssh(key, known_hosts, spec.address, "systemctl is-system-running --wait")
        failed = _ssh(key, known_hosts, spec.address, "systemctl --failed --no-legend").stdout
        assert state.stdout.strip() == "running", f"system is {state.stdout.strip()}: {failed}"
        # Ensuring again leaves the running machine alone (same domain, not restarted).
        before = subprocess.run(
            ["virsh", "-c", driver.uri, "domid", domain_name(vm_network.lab, "vm1")],
            capture_output=True,
            text=True,
        ).stdout
        [again] = driver.ensure(vm_network, [spec])
        after = subprocess.run(
            ["virsh", "-c", driver.uri, "domid", domain_name(vm_network.lab, "vm1")],
            capture_output=True,
            text=True,
        ).stdout
        assert again.ssh_ready and before == after
    finally:
        driver.destroy(vm_network, None)
    assert _leftovers(driver, vm_network, "vm1") == []


# -- what the stack declares -----------------------------------------------------

DECLARED = """\
name: decl
host_network: {subnet: 10.77.0.0/24, gateway: 10.77.0.1}
nodes:
  - name: vm1
    address: 10.77.0.21
    machine:
      driver: libvirt
      hypervisor: qemu+ssh://root@127.0.0.1/system
      cpus: 2
      memory: 2GiB
      disks: [{name: data, size: 20GiB}, {name: brick, size: 500MiB}]
      networks: [{network: br-storage, address: 10.200.0.21, mtu: 9000}, {network: br-mgmt}]
      pci_passthrough: ["0000:3b:00.0"]
network:
  vlans: [{name: storage, id: 200, nodes: [vm1], subnet: 10.200.0.0/24}]
"""


def _declared(tmp_path: Path, text: str = DECLARED) -> Path:
    folder = tmp_path / "decl"
    folder.mkdir(exist_ok=True)
    (folder / "stack.yaml").write_text(text)
    return folder


def test_declared_disks_networks_and_pci_devices_reach_the_domain(tmp_path: Path) -> None:
    from podium.lab.machines import machine_specs
    from podium.stack import load_stack

    spec = machine_specs(load_stack(_declared(tmp_path)), KEY)[0]
    assert spec.disks == (("data", 20 << 30), ("brick", 500 << 20))
    assert spec.extra_interfaces == ("br-storage,10.200.0.21/24,mtu=9000", "br-mgmt")
    xml = domain_xml(NET, spec, kind="kvm", pool="podium", image_volume="base.qcow2", host_keys=[])
    _validate(xml, "domain", tmp_path)
    root = ET.fromstring(xml)
    disks = root.findall("devices/disk")
    found = [(d.find("source").get("volume"), d.find("target").get("dev"), d.findtext("serial"))  # type: ignore[union-attr]
             for d in disks[2:]]
    assert found == [("pdm-lab-vm1.data.qcow2", "vdc", "data"), ("pdm-lab-vm1.brick.qcow2", "vdd", "brick")]
    nics = root.findall("devices/interface")
    assert [n.find("source").get("bridge") for n in nics] == ["pdm-lab", "br-storage", "br-mgmt"]  # type: ignore[union-attr]
    assert nics[1].find("mtu").get("size") == "9000"  # type: ignore[union-attr]
    address = root.find("devices/hostdev/source/address")
    assert address is not None and (address.get("bus"), address.get("slot")) == ("0x3b", "0x00")
    # The NIC's address lands in the seed with the VLAN subnet's prefix.
    assert "Address=10.200.0.21/24" in network_units(NET, spec)["etc/systemd/network/20-lab-lab1.network"]


def test_the_lab_creates_vms_on_the_hypervisor_the_stack_declares(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from podium.lab.up import lab_parts
    from podium.stack import load_stack

    monkeypatch.setenv("PODIUM_STATE_DIR", str(tmp_path / "state"))
    parts = lab_parts(load_stack(_declared(tmp_path)))
    assert isinstance(parts.driver, LibvirtDriver)
    assert parts.driver.uri == "qemu+ssh://root@127.0.0.1/system"
    # Lab machines run as VMs (`lab up --machines libvirt`) declare none: this machine's.
    plain = "name: decl\nhost_network: {subnet: 10.77.0.0/24, gateway: 10.77.0.1}\nnodes:\n" \
        "  - {name: vm1, address: 10.77.0.21, machine: {driver: nspawn}}\n"
    driver = lab_parts(load_stack(_declared(tmp_path, plain)), "libvirt").driver
    assert isinstance(driver, LibvirtDriver) and driver.uri == "qemu:///system"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (("address: 10.200.0.21", "address: 10.201.0.21"),
         "nodes.vm1.machine.networks[0].address 10.201.0.21: in no subnet the stack declares"),
        (("network:\n", "  - name: vm2\n    address: 10.77.0.22\n"
          "    machine: {driver: libvirt, hypervisor: 'qemu:///system'}\nnetwork:\n"),
         "its machines name several hypervisors (qemu+ssh://root@127.0.0.1/system, qemu:///system)"),
    ],
)
def test_declarations_the_lab_cannot_create_are_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, change: tuple[str, str], message: str
) -> None:
    from podium.lab.up import lab_parts
    from podium.stack import load_stack

    monkeypatch.setenv("PODIUM_STATE_DIR", str(tmp_path / "state"))
    with pytest.raises(InvalidInput, match=re.escape(message)):
        lab_parts(load_stack(_declared(tmp_path, DECLARED.replace(*change))))


def test_hybrid_vms_render_for_their_declared_hypervisor(tmp_path: Path) -> None:
    from podium.lab.machines import hypervisor, machine_specs
    from podium.stack import load_stack

    stack = load_stack(Path(__file__).resolve().parents[1] / "stacks" / "hybrid")
    assert hypervisor(stack, "qemu:///system") == "qemu+ssh://hv1.example.internal/system"
    for spec in machine_specs(stack, KEY):
        xml = domain_xml(NET, spec, kind="kvm", pool="podium", image_volume="base.qcow2", host_keys=[])
        _validate(xml, "domain", tmp_path)
        assert len(ET.fromstring(xml).findall("devices/disk")) == 2 + len(spec.disks)
