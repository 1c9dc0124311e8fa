"""The Vagrantfile validates and brings up exactly the machines the stack declares."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest

from podium.errors import InvalidInput
from podium.lab.box import box_metadata, pack_box
from podium.lab.vmimage import PARTITION_START
from tests.fixtures_vm import vm_image

__all__ = ["vm_image"]

REPO = Path(__file__).resolve().parents[1]

STACK = """\
name: vt
host_network: {subnet: 10.215.0.0/24, gateway: 10.215.0.1}
nodes:
  - name: alpha
    address: 10.215.0.10
    machine: {driver: nspawn, cpus: 1, memory: 768MiB}
  - name: beta
    address: 10.215.0.11
    machine: {driver: libvirt, cpus: 2, memory: 1GiB}
  - name: metal
    address: 10.215.0.20
"""


def _vagrant(tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    if shutil.which("vagrant") is None:
        pytest.skip("vagrant is not installed (apt-get install -y vagrant vagrant-libvirt)")
    environment = {
        **os.environ,
        "VAGRANT_CWD": str(REPO),
        # Keep Vagrant's state out of the repository and the user's home.
        "VAGRANT_DOTFILE_PATH": str(tmp_path / "dot"),
        "VAGRANT_HOME": str(tmp_path / "home"),
        "VAGRANT_CHECKPOINT_DISABLE": "1",
        **env,
    }
    return subprocess.run(["vagrant", *args], capture_output=True, text=True, env=environment, cwd=tmp_path)


def test_vagrantfile_validates_with_the_lab_stack(tmp_path: Path) -> None:
    assert (REPO / "stacks" / "lab" / "stack.yaml").exists()
    result = _vagrant(tmp_path, "validate")
    assert result.returncode == 0, result.stdout + result.stderr


def test_vagrantfile_defines_the_stacks_machines_and_no_bare_metal(tmp_path: Path) -> None:
    stack = tmp_path / "stack.yaml"
    stack.write_text(STACK)
    result = _vagrant(tmp_path, "validate", PODIUM_STACK=str(stack))
    assert result.returncode == 0, result.stdout + result.stderr
    # `vagrant status` asks libvirt about each machine; it needs libvirtd.
    status = _vagrant(tmp_path, "status", "--machine-readable", PODIUM_STACK=str(stack))
    if status.returncode != 0:
        pytest.skip(f"vagrant status needs a running libvirtd: {status.stderr.strip()[:200]}")
    machines = [line.split(",")[1] for line in status.stdout.splitlines() if ",state," in line]
    assert machines == ["alpha", "beta"]


@pytest.mark.parametrize(
    ("change", "env", "message"),
    [
        (("768MiB", "768 megs"), {}, "nodes.alpha.machine.memory"),
        (("host_network", "hostnet"), {}, "host_network"),
        ((), {"PODIUM_LIBVIRT_DRIVER": "xen"}, "PODIUM_LIBVIRT_DRIVER=xen"),
    ],
)
def test_vagrantfile_names_what_is_wrong(
    tmp_path: Path, change: tuple[str, ...], env: dict[str, str], message: str
) -> None:
    stack = tmp_path / "stack.yaml"
    stack.write_text(STACK.replace(*change) if change else STACK)
    result = _vagrant(tmp_path, "validate", PODIUM_STACK=str(stack), **env)
    assert result.returncode != 0
    assert message in result.stdout + result.stderr


PROVISION = REPO / "src" / "podium" / "lab" / "vagrant_provision.rb"
# The Vagrantfile's decision when to run `podium up`, driven as its triggers drive it.
PROVISION_SCRIPT = """
require ARGV[0]
folder, names, runs = ARGV[1], %w[ctrl node1 node2], []
P = PodiumProvision
out = []
P.finished(folder, "ctrl"); P.finished(folder, "node2")
out << P.once_all_up(folder, names) { runs << 1 }
P.finished(folder, "node1")
# Two machines whose `after :up` triggers run at once, as parallel ups do: one provisions.
threads = 2.times.map { Thread.new { P.once_all_up(folder, names) { sleep 0.2; runs << 2 } } }
out.concat(threads.map(&:value).sort)
sleep 0.01
P.starting(folder, "node1")
out << P.once_all_up(folder, names) { runs << 3 }
sleep 0.01
P.finished(folder, "node1")
begin
  P.once_all_up(folder, names) { raise "podium up failed" }
rescue RuntimeError
  out << :failed
end
out << P.once_all_up(folder, names) { runs << 4 }
P.finished(folder, "node2", up: false)
out << P.once_all_up(folder, names) { runs << 5 }
puts out.join(","), runs.join(",")
"""


def test_provisioning_waits_for_every_node_and_runs_once_per_bring_up(tmp_path: Path) -> None:
    if shutil.which("ruby") is None:
        pytest.skip("ruby is not installed (apt-get install -y vagrant)")
    done = subprocess.run(
        ["ruby", "-e", PROVISION_SCRIPT, str(PROVISION), str(tmp_path / "marks")],
        capture_output=True, text=True, timeout=60,
    )
    assert done.returncode == 0, done.stderr
    outcomes, runs = done.stdout.splitlines()
    assert outcomes.split(",") == ["waiting", "already", "provisioned", "waiting", "failed", "provisioned", "waiting"]
    # Nothing ran before node1 was up, one of the two simultaneous triggers ran, none while node1
    # came up again, and a failed provisioning is retried by the next trigger.
    assert runs.split(",") == ["2", "4"]


def test_a_box_file_must_be_named_dot_box(tmp_path: Path) -> None:
    with pytest.raises(InvalidInput, match=r"must end in \.box"):
        pack_box(tmp_path / "podium.tar", image=tmp_path / "unused.qcow2", authorized_key="k")
    assert box_metadata(4) == {"provider": "libvirt", "format": "qcow2", "virtual_size": 4}


@pytest.mark.vm
def test_packed_box_holds_the_image_with_the_login_key_in_it(vm_image: Path, tmp_path: Path) -> None:
    key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBoxKeyForTheTest box-test"
    box = pack_box(tmp_path / "podium.box", image=vm_image, authorized_key=key)
    with tarfile.open(box) as tar:
        assert sorted(tar.getnames()) == ["Vagrantfile", "box.img", "metadata.json"]
        tar.extractall(tmp_path / "box", filter="data")
    metadata = json.loads((tmp_path / "box" / "metadata.json").read_text())
    assert metadata == {"provider": "libvirt", "format": "qcow2", "virtual_size": 4}
    assert 'config.ssh.username = "root"' in (tmp_path / "box" / "Vagrantfile").read_text()
    raw = tmp_path / "box.raw"
    subprocess.run(
        ["qemu-img", "convert", "-O", "raw", str(tmp_path / "box" / "box.img"), str(raw)],
        check=True,
    )
    partition = f"{raw}?offset={PARTITION_START * 512}"
    found = subprocess.run(
        ["debugfs", "-R", "cat /root/.ssh/authorized_keys", partition],
        capture_output=True,
        text=True,
        check=True,
    )
    # Vagrant's insecure key (which Vagrant swaps at first login) and the stack's key.
    from podium.lab.box import vagrant_public_key

    assert found.stdout.strip().splitlines() == [*vagrant_public_key().splitlines(), key]
    mode = subprocess.run(
        ["debugfs", "-R", "stat /root/.ssh/authorized_keys", partition],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "Mode:  0600" in mode.stdout and "User:     0" in mode.stdout


POOL_SCRIPT = """
require ARGV[0]
threads = 3.times.map { Thread.new { PodiumProvision.ensure_pool(ARGV[1], ARGV[2]) } }
threads.each(&:join)
puts "made"
"""


@pytest.mark.vm
def test_machines_coming_up_at_once_make_the_storage_pool_once(tmp_path: Path) -> None:
    # Vagrant runs every machine's `before :up` in parallel; each made the pool, and all but one
    # failed on "pool already exists" before the pool was made under a lock.
    from tests.fixtures_vm import require_vm_host

    require_vm_host()
    if shutil.which("ruby") is None:
        pytest.skip("ruby is not installed (apt-get install -y vagrant)")
    from podium.drivers.libvirtd import ensure_libvirtd

    ensure_libvirtd()
    pool = f"podium-vagrant-test-{os.getpid()}"
    try:
        done = subprocess.run(["ruby", "-e", POOL_SCRIPT, str(PROVISION), pool, str(tmp_path / "pool")],
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 0 and done.stdout.strip() == "made", done.stderr
        info = subprocess.run(["virsh", "-c", "qemu:///system", "pool-info", pool],
                              capture_output=True, text=True).stdout
        assert "running" in info, info
    finally:
        for step in ("pool-destroy", "pool-undefine"):
            subprocess.run(["virsh", "-c", "qemu:///system", step, pool], capture_output=True)
