"""Shared lab fixtures: the cached Debian image and a lab network no other lab uses."""

from __future__ import annotations

import os
import random
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from podium.drivers.base import LabNetwork
from podium.lab.image import build_rootfs
from podium.render import REPO


def podium(*args: str, timeout: float = 1800) -> subprocess.CompletedProcess[str]:
    """`podium ARGS` as a user runs it: a child process in the repository, output captured."""
    return subprocess.run([sys.executable, "-m", "podium", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=REPO)


def require_lab_host() -> None:
    """Skip unless this host can run lab machines: root and the nspawn/debootstrap tools."""
    if os.geteuid() != 0:
        pytest.skip("lab machines need root (systemd-nspawn, network namespaces, nftables)")
    missing = [t for t in ("systemd-nspawn", "debootstrap", "ip", "nft", "nginx") if not shutil.which(t)]
    if missing:
        pytest.skip(f"lab machines need {', '.join(missing)} (apt-get install systemd-container"
                    " debootstrap iproute2 nftables nginx)")


@pytest.fixture(scope="session")
def lab_image() -> Path:
    """The lab's Debian 12 rootfs, built once (about two minutes) and then reused from cache."""
    require_lab_host()
    return build_rootfs()


def unique_lab_network() -> LabNetwork:
    """A lab name and a 10.213.x.0/24 subnet that no route on this host uses yet."""
    routes = subprocess.run(["ip", "-4", "route"], capture_output=True, text=True).stdout
    free = [n for n in range(1, 255) if f"10.213.{n}." not in routes]
    third = random.choice(free)
    return LabNetwork(
        lab="t" + uuid.uuid4().hex[:8],
        subnet=f"10.213.{third}.0/24",
        gateway=f"10.213.{third}.1",
    )


@pytest.fixture
def lab_network() -> LabNetwork:
    require_lab_host()
    return unique_lab_network()
