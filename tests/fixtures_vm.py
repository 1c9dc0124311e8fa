"""Shared VM fixtures: the cached bootable disk and a lab network no other lab uses."""

from __future__ import annotations

import importlib.util
import os
import random
import shutil
import subprocess
import uuid
from pathlib import Path

import pytest

from podium.drivers.base import LabNetwork


def require_vm_host() -> None:
    """Skip unless this host can boot libvirt VMs: root, libvirt-python, QEMU and libvirtd."""
    if os.geteuid() != 0:
        pytest.skip("libvirt VMs need root here (lab bridge, libvirtd, image build)")
    if importlib.util.find_spec("libvirt") is None:
        pytest.skip("libvirt-python is not installed (pip install 'podium[libvirt]')")
    tools = ("qemu-system-x86_64", "qemu-img", "libvirtd", "virtlogd", "ssh", "ip", "nft")
    missing = [tool for tool in tools if not shutil.which(tool)]
    if missing:
        pytest.skip(
            f"libvirt VMs need {', '.join(missing)} "
            "(apt-get install -y libvirt-daemon-system qemu-system-x86 qemu-utils)"
        )


@pytest.fixture(scope="session")
def vm_image() -> Path:
    """The lab's bootable qcow2, built once (a few minutes) and then reused from cache."""
    require_vm_host()
    from podium.lab.vmimage import build_vm_image

    return build_vm_image()


def unique_vm_network() -> LabNetwork:
    """A lab name and a 10.214.x.0/24 subnet that no route on this host uses yet."""
    routes = subprocess.run(["ip", "-4", "route"], capture_output=True, text=True).stdout
    free = [n for n in range(1, 255) if f"10.214.{n}." not in routes]
    third = random.choice(free)
    return LabNetwork(
        lab="v" + uuid.uuid4().hex[:8],
        subnet=f"10.214.{third}.0/24",
        gateway=f"10.214.{third}.1",
    )


@pytest.fixture
def vm_network() -> LabNetwork:
    require_vm_host()
    return unique_vm_network()
