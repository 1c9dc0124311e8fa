"""The Vagrant lab for real: `podium lab box` packs the box, and `vagrant up` boots a
vagrant-libvirt machine (TCG here) that the Vagrantfile's trigger provisions with `podium up`
through base and network; `podium verify` passes, and `vagrant destroy` leaves nothing behind."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from tests.fixtures_lab import REPO, podium, remove_stack_state
from tests.fixtures_vm import require_vm_host, unique_vm_network

pytestmark = pytest.mark.vm


def stack_text(name: str, subnet: str, gateway: str) -> str:
    address = gateway.rsplit(".", 1)[0] + ".10"
    return f"""\
name: {name}
host_network: {{subnet: {subnet}, gateway: {gateway}}}
nodes:
  - name: solo
    address: {address}
    machine: {{driver: libvirt, hypervisor: "qemu:///system", cpus: 1, memory: 768MiB}}
network:
  bridges:
    - {{name: br-data, nodes: [solo], mtu: 1500}}
"""


def virsh(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["virsh", "-q", "-c", "qemu:///system", *args], capture_output=True, text=True)


def test_vagrant_up_provisions_a_machine_through_base_and_network(tmp_path: Path) -> None:
    require_vm_host()
    if shutil.which("vagrant") is None:
        pytest.skip("vagrant is not installed (apt-get install -y vagrant vagrant-libvirt)")
    from podium.drivers.libvirtd import ensure_libvirtd

    ensure_libvirtd()
    network = unique_vm_network()
    name = "t" + uuid.uuid4().hex[:3]
    folder = tmp_path / name
    folder.mkdir()
    (folder / "stack.yaml").write_text(stack_text(name, network.subnet, network.gateway))
    pool = f"podium-vagrant-{name}"
    env = {
        **os.environ,
        # The trigger runs `podium` from PATH: this checkout's.
        "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
        "VAGRANT_CWD": str(REPO),
        "VAGRANT_DOTFILE_PATH": str(tmp_path / "dot"),
        "VAGRANT_HOME": str(tmp_path / "home"),
        "VAGRANT_CHECKPOINT_DISABLE": "1",
        "PODIUM_STACK": str(folder / "stack.yaml"),
        "PODIUM_BOX": str(tmp_path / "podium.box"),
        "PODIUM_VAGRANT_POOL": pool,
    }

    def vagrant(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["vagrant", *args], capture_output=True, text=True, env=env,
                              cwd=tmp_path, timeout=1500)

    try:
        box = podium("lab", "box", "--stack", str(folder), "--out", env["PODIUM_BOX"])
        assert box.returncode == 0, box.stderr
        up = vagrant("up")
        assert up.returncode == 0, up.stdout[-4000:] + up.stderr[-3000:]
        # The trigger provisioned once, after the machine was up, and both roles changed it.
        assert up.stdout.count(f"trusted 1 machines of {name}") == 1, up.stdout[-4000:]
        # podium up reports each component on stderr.
        assert "✓ base: changed" in up.stderr and "✓ network: changed" in up.stderr, up.stderr[-4000:]
        assert f"vagrant-{name}-solo" in virsh("list", "--name").stdout
        verify = podium("verify", str(folder))
        assert verify.returncode == 0, verify.stdout[-3000:] + verify.stderr[-2000:]
        assert "network" in verify.stdout and "base" in verify.stdout
    finally:
        destroy = vagrant("destroy", "-f")
        left = virsh("list", "--all", "--name").stdout
        for line in virsh("vol-list", pool).stdout.splitlines():
            virsh("vol-delete", line.split()[0], "--pool", pool)
        virsh("pool-destroy", pool)
        virsh("pool-undefine", pool)
        shutil.rmtree(f"/var/lib/podium/vagrant/{pool}", ignore_errors=True)
        remove_stack_state(name)
    assert destroy.returncode == 0, destroy.stdout[-2000:] + destroy.stderr[-2000:]
    assert f"vagrant-{name}-solo" not in left, left
    assert f"podium-{name}" not in virsh("net-list", "--all", "--name").stdout
