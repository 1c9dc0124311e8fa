"""Shared lab fixtures: the cached Debian image and a lab network no other lab uses."""

from __future__ import annotations

import os
import random
import re
import shutil
import subprocess
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest

from podium.drivers.base import LabNetwork
from podium.lab.image import build_rootfs
from podium.lab.up import LAB_STATE
from podium.render import REPO
from podium.secrets import state_root
from podium.stack import load_stack


def podium(*args: str, timeout: float = 1800,
           env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """`podium ARGS` as a user runs it: a child process in the repository, output captured, with
    `env` added to this process' environment."""
    return subprocess.run([sys.executable, "-m", "podium", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=REPO, env={**os.environ, **(env or {})})


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


def free_test_subnet() -> str:
    """A 10.213.x.0/24 that no route or address on this host uses yet, e.g. "10.213.57."."""
    used = subprocess.run(["ip", "-4", "route"], capture_output=True, text=True).stdout
    used += subprocess.run(["ip", "-4", "addr"], capture_output=True, text=True).stdout
    free = [n for n in range(1, 255) if f"10.213.{n}." not in used]
    return f"10.213.{random.choice(free)}."


def unique_lab_name() -> str:
    return "t" + uuid.uuid4().hex[:8]


def short_lab_name() -> str:
    """A lab name as short as "lab" ("t" and three letters or digits) that no lab here uses.

    A node's machine is named pdm-<lab>-<node>; with 9-character lab names the network role
    failed on a node in 4 of 5 appliance runs (systemd-networkd there: "Failed to configure
    address: Numerical result out of range"), with 3-character ones in none.
    """
    alphabet = "abcdefghijklmnopqrstuvwxyz0123456789"
    for _ in range(100):
        name = "t" + "".join(random.choice(alphabet) for _ in range(3))
        taken = subprocess.run(["ip", "link", "show", f"pdm-{name}"], capture_output=True).returncode == 0
        if not taken and not (LAB_STATE / name).exists() and not (state_root() / name).exists():
            return name
    raise AssertionError("no free short lab name after 100 tries")


def unique_lab_network() -> LabNetwork:
    """A lab name and a 10.213.x.0/24 subnet that no route on this host uses yet."""
    prefix = free_test_subnet()
    return LabNetwork(lab=unique_lab_name(), subnet=f"{prefix}0/24", gateway=f"{prefix}1")


@dataclass(frozen=True)
class UniqueStack:
    """A copy of a stack under a name and subnet of its own; everything else is the original."""

    folder: Path
    name: str
    prefix: str  # "10.213.57.": the copy's node at 10.77.0.10 is at 10.213.57.10

    def address(self, original: str) -> str:
        return self.prefix + original.rsplit(".", 1)[1]


def unique_stack(source: Path, into: Path) -> UniqueStack:
    """Copy a stack folder (a /24 lab) to `into`, renamed and moved to a free 10.213.x.0/24.

    A test that brings up stacks/lab itself would take over, and then remove, the lab a user
    may be running (same name, bridge, subnet, keys and usage); the copy shares none of them.
    """
    original = load_stack(source)
    assert original.host_network is not None, f"{source} declares no host_network"
    old = str(original.host_network.subnet.network_address).rsplit(".", 1)[0] + "."
    name, prefix = short_lab_name(), free_test_subnet()
    folder = into / name
    # The declaration only: a bundle the original built is built again for the copy's name.
    shutil.copytree(source, folder, ignore=shutil.ignore_patterns("bundle"))
    text = (source / "stack.yaml").read_text(encoding="utf-8")
    text = re.sub(rf"^name: {re.escape(original.name)}$", f"name: {name}", text, count=1, flags=re.M)
    (folder / "stack.yaml").write_text(text.replace(old, prefix), encoding="utf-8")
    copy = load_stack(folder)
    assert copy.name == name and str(copy.host_network.subnet) == f"{prefix}0/24", "stack not renamed"
    return UniqueStack(folder, name, prefix)


def remove_stack_state(name: str) -> None:
    """What a test stack leaves on the control machine after `lab down`: secrets, lab state,
    the generated inventory. Only ever called with a name the test made up."""
    assert re.fullmatch(r"t[0-9a-z]{3}", name), f"{name!r} is not a test stack's name"
    for folder in (state_root() / name, LAB_STATE / name):
        shutil.rmtree(folder, ignore_errors=True)
    (REPO / "inventory" / f"{name}.py").unlink(missing_ok=True)


@pytest.fixture
def lab_network() -> LabNetwork:
    require_lab_host()
    return unique_lab_network()
