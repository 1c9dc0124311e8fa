"""A VM on the hypervisor a stack declares by qemu+ssh://: this machine's libvirtd reached through
a real sshd on 127.0.0.1, as another host's would be. The machine is defined (disks, seed, domain)
but not booted: booting needs the lab's VM image (minutes to build) and, on a remote hypervisor,
bridges the site made; what the stack declares is in the domain read back through that connection."""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path

import pytest

from podium.drivers.libvirt import LibvirtDriver
from podium.drivers.libvirt_machine import domain_name
from podium.drivers.libvirtd import ensure_libvirtd
from tests.fixtures_sshd import Sshd, sshd
from tests.fixtures_vm import require_vm_host

__all__ = ["sshd"]


@pytest.fixture
def ssh_to_hypervisor(sshd: Sshd, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Sshd]:
    """libvirt runs `ssh` for qemu+ssh://; this one knows the test sshd's host key and the key
    it lets in, as an operator's ~/.ssh/config would, so the URI stays what a stack can declare."""
    if shutil.which("virt-ssh-helper") is None:
        pytest.skip("qemu+ssh:// needs virt-ssh-helper on the hypervisor (apt-get install libvirt-daemon-system)")
    host_key = (sshd.key.parent / "host.pub").read_text().split()
    (tmp_path / "known_hosts").write_text(f"[127.0.0.1]:{sshd.port} {host_key[0]} {host_key[1]}\n")
    config = tmp_path / "ssh_config"
    config.write_text(f"Host 127.0.0.1\n  IdentityFile {sshd.key}\n  IdentitiesOnly yes\n"
                      f"  UserKnownHostsFile {tmp_path / 'known_hosts'}\n  StrictHostKeyChecking yes\n"
                      "  BatchMode yes\n")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "ssh").write_text(f"#!/bin/sh\nexec {shutil.which('ssh')} -F {config} \"$@\"\n")
    (bin_dir / "ssh").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    yield sshd


def test_a_vm_is_defined_through_qemu_ssh_with_its_declared_disks_and_networks(
    ssh_to_hypervisor: Sshd, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import libvirt

    from podium.lab.up import lab_parts
    from podium.stack import load_stack

    require_vm_host()
    monkeypatch.setenv("PODIUM_STATE_DIR", str(tmp_path / "state"))
    uri = f"qemu+ssh://root@127.0.0.1:{ssh_to_hypervisor.port}/system"
    name = "r" + uuid.uuid4().hex[:7]
    folder = tmp_path / name
    folder.mkdir()
    (folder / "stack.yaml").write_text(f"""\
name: {name}
host_network: {{subnet: 10.77.0.0/24, gateway: 10.77.0.1}}
nodes:
  - name: vm1
    address: 10.77.0.21
    machine:
      driver: libvirt
      hypervisor: {uri}
      cpus: 1
      memory: 1GiB
      disks: [{{name: data, size: 2GiB}}, {{name: brick, size: 500MiB}}]
      networks: [{{network: br-storage, address: 10.200.0.21}}, {{network: br-mgmt}}]
network:
  vlans: [{{name: storage, id: 200, nodes: [vm1], subnet: 10.200.0.0/24}}]
""")
    parts = lab_parts(load_stack(folder))
    driver = parts.driver
    assert isinstance(driver, LibvirtDriver) and driver.uri == uri
    # A small qcow2 of this test's own stands in for the boot disk: nothing boots from it.
    image = tmp_path / f"podium-remote-test-{name}.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(image), "64M"], check=True)
    driver.image = image
    ensure_libvirtd()  # the libvirtd that sshd's side of qemu+ssh:// reaches
    logins = ssh_to_hypervisor.logins()
    try:
        assert driver.define(parts.network, parts.specs) == [domain_name(name, "vm1")]
        assert ssh_to_hypervisor.logins() > logins, "the driver did not go through the hypervisor's sshd"
        conn = libvirt.open(uri)
        try:
            dom = conn.lookupByName(domain_name(name, "vm1"))
            assert not dom.isActive(), "the machine was booted; define leaves it stopped"
            root = ET.fromstring(dom.XMLDesc(0))
        finally:
            conn.close()
        volumes = [d.find("source").get("volume") for d in root.findall("devices/disk")]  # type: ignore[union-attr]
        assert volumes[-2:] == [f"pdm-{name}-vm1.data.qcow2", f"pdm-{name}-vm1.brick.qcow2"], volumes
        bridges = [n.find("source").get("bridge") for n in root.findall("devices/interface")]  # type: ignore[union-attr]
        assert bridges == [f"pdm-{name}", "br-storage", "br-mgmt"], bridges
    finally:
        driver.destroy(parts.network, None)
        conn = libvirt.open(uri)
        try:
            pool = conn.storagePoolLookupByName(driver.pool)
            pool.refresh(0)
            if image.name in pool.listVolumes():
                pool.storageVolLookupByName(image.name).delete(0)
            left = [v for v in pool.listVolumes() if v.startswith(f"pdm-{name}-") or v == image.name]
            defined = [d.name() for d in conn.listAllDomains(0) if d.name().startswith(f"pdm-{name}-")]
        finally:
            conn.close()
    assert left == [] and defined == [], f"left on the hypervisor: {left + defined}"
