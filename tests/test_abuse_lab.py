"""`podium lab up` beside a lab, link or route it did not create: refused with one sentence before it
creates anything, and the running lab keeps its machine, bridge and address. Every lab here is a
copy of stacks/lab under a name and a 10.213.x.0/24 subnet of its own; stacks/lab is never used."""

from __future__ import annotations

import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from podium.drivers.base import LabNetwork, MachineSpec
from podium.drivers.nspawn import NspawnDriver
from podium.lab import conflicts
from podium.lab.up import LAB_STATE, lab_network, reserve_network
from podium.render import REPO
from podium.secrets import StackSecrets, state_root
from podium.stack import load_stack
from tests.fixtures_lab import (
    UniqueStack,
    free_test_subnet,
    lab_image,
    podium,
    remove_stack_state,
    require_lab_host,
    unique_stack,
)

__all__ = ["lab_image"]  # fixture, imported so pytest finds it

pytestmark = pytest.mark.lab


@dataclass
class RunningLab:
    stack: UniqueStack
    network: LabNetwork
    driver: NspawnDriver

    def ssh_ready(self) -> bool:
        return all(s.running and s.ssh_ready for s in self.driver.status(self.network, ["ctrl"]))


@pytest.fixture
def running_lab(lab_image: Path, tmp_path: Path) -> Iterator[RunningLab]:
    """A lab brought up the way `lab up` starts one: its network reserved, its control machine
    booted on the bridge (provisioning is left out: the network is what a second lab fights for)."""
    first = unique_stack(REPO / "stacks" / "lab", tmp_path / "first")
    stack = load_stack(first.folder)
    network = lab_network(stack)
    driver = NspawnDriver(rootfs=lab_image, boot_timeout=60)
    try:
        reserve_network(stack)
        public = StackSecrets(first.name).ssh_public_key
        driver.ensure(network, [MachineSpec("ctrl", first.address("10.77.0.10"), 1, 512, (public,))])
        lab = RunningLab(first, network, driver)
        assert lab.ssh_ready()
        yield lab
    finally:
        driver.destroy(network)
        remove_stack_state(first.name)


def second_stack(tmp_path: Path, prefix: str | None = None, name: str | None = None) -> UniqueStack:
    """Another copy of stacks/lab, moved onto `prefix` (a subnet in use) or renamed to `name`."""
    second = unique_stack(REPO / "stacks" / "lab", tmp_path / "second")
    text = (second.folder / "stack.yaml").read_text()
    if prefix:
        text = text.replace(second.prefix, prefix)
    if name:
        text = text.replace(f"name: {second.name}\n", f"name: {name}\n")
    (second.folder / "stack.yaml").write_text(text)
    return UniqueStack(second.folder, name or second.name, prefix or second.prefix)


def bridge_address(bridge: str) -> str:
    return subprocess.run(["ip", "-o", "-4", "addr", "show", "dev", bridge], capture_output=True, text=True).stdout


def test_a_second_lab_on_a_subnet_another_lab_holds_is_refused_and_the_first_keeps_running(
    running_lab: RunningLab, tmp_path: Path
) -> None:
    first = running_lab.stack
    second = second_stack(tmp_path, prefix=first.prefix)
    before = bridge_address(f"pdm-{first.name}")
    try:
        done = podium("lab", "up", str(second.folder), timeout=300)
        assert done.returncode == 2, done.stdout + done.stderr
        message = done.stderr.strip()
        for part in (str(second.folder / "stack.yaml"), f"{first.prefix}0/24", f"lab '{first.name}'",
                     f"pdm-{first.name}", "give host_network a free subnet"):
            assert part in message, f"{part!r} missing from: {message}"
        assert "Traceback" not in message and len(message.splitlines()) <= 3
        # Nothing of the second lab was made: no bridge, no secrets, no lab state.
        assert subprocess.run(["ip", "link", "show", f"pdm-{second.name}"], capture_output=True).returncode != 0
        assert not (state_root() / second.name).exists() and not (LAB_STATE / second.name).exists()
        assert bridge_address(f"pdm-{first.name}") == before
        assert running_lab.ssh_ready(), "the running lab lost its machine"
    finally:
        remove_stack_state(second.name)


def test_a_lab_with_the_same_name_from_another_stack_file_is_refused_up_and_down(
    running_lab: RunningLab, tmp_path: Path
) -> None:
    first = running_lab.stack
    impostor = second_stack(tmp_path, name=first.name)
    for verb in ("up", "down"):
        done = podium("lab", verb, str(impostor.folder), timeout=300)
        assert done.returncode == 2, done.stdout + done.stderr
        assert f"pdm-{first.name}" in done.stderr and str(first.folder / "stack.yaml") in done.stderr
    assert running_lab.ssh_ready(), "the running lab lost its machine"
    # The rightful stack may still bring it up again (a re-run) without being refused.
    conflicts.check_network_free(running_lab.network, first.folder / "stack.yaml", LAB_STATE)


def test_a_lab_on_a_subnet_a_host_link_holds_is_refused(tmp_path: Path) -> None:
    require_lab_host()
    prefix = free_test_subnet()
    link = "pdt" + uuid.uuid4().hex[:8]
    # A bridge, not a dummy link: some kernels (this CI sandbox's) lack the dummy module.
    subprocess.run(["ip", "link", "add", link, "type", "bridge"], check=True)
    try:
        subprocess.run(["ip", "addr", "add", f"{prefix}200/24", "dev", link], check=True)
        stack = second_stack(tmp_path, prefix=prefix)
        done = podium("lab", "up", str(stack.folder), timeout=300)
        assert done.returncode == 2, done.stdout + done.stderr
        assert f"link {link}" in done.stderr and f"{prefix}0/24" in done.stderr
        assert subprocess.run(["ip", "link", "show", f"pdm-{stack.name}"], capture_output=True).returncode != 0
        remove_stack_state(stack.name)
    finally:
        subprocess.run(["ip", "link", "del", link], check=True)
