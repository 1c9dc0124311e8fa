"""The libvirt path for real: one VM (TCG where KVM cannot boot guests) booted by the same driver
production hypervisors use, provisioned with the base role through `podium lab up`, verified,
and removed without leftovers."""

import json
import subprocess
from pathlib import Path

import pytest

from tests.fixtures_lab import podium
from tests.fixtures_vm import require_vm_host

pytestmark = pytest.mark.vm
STACK = str(Path(__file__).parent / "stacks" / "labvm")



@pytest.fixture(scope="module")
def lab():
    require_vm_host()
    try:
        result = podium("lab", "up", STACK)
        assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
        yield result
    finally:
        assert podium("lab", "down", STACK).returncode == 0
        domains = subprocess.run(["virsh", "-c", "qemu:///system", "list", "--all", "--name"],
                                 capture_output=True, text=True).stdout
        assert "labvm" not in domains, domains
        assert subprocess.run(["ip", "link", "show", "pdm-labvm"], capture_output=True).returncode != 0


def test_vm_is_provisioned_and_verified(lab):
    assert "✓ verify base on vm1" in lab.stderr
    result = podium("verify", STACK, "--json")
    assert result.returncode == 0, result.stderr
    [outcome] = json.loads(result.stdout)
    assert outcome["component"] == "base" and outcome["passed"] and outcome["tests"] >= 6


def test_vm_is_a_vm_not_a_container(lab):
    virt = podium("lab", "ssh", "vm1", "--stack", STACK, "--", "systemd-detect-virt")
    assert virt.stdout.strip() in ("qemu", "kvm"), virt.stdout + virt.stderr


def test_second_up_on_the_vm_changes_nothing(lab):
    result = podium("up", STACK)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().endswith("changes: 0")
