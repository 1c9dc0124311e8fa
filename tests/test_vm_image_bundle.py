"""The libvirt lab's VM image from a bundle: a stack with VMs gets the kernel and boot loader in
its bundle, and the image (debootstrap, then the kernel in a chroot) builds from that bundle in
a network namespace with no network at all."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from podium.bundle import debs
from podium.bundle.contents import bundle_contents, lab_packages
from podium.lab.vmimage import VM_PACKAGES
from podium.render import REPO
from podium.stack.loader import load_stack
from podium.stack.versions import load_versions

LABVM = (REPO / "tests" / "stacks" / "labvm" / "stack.yaml").read_text(encoding="utf-8")


def test_a_bundle_carries_the_vm_kernel_for_a_stack_with_vms_only(tmp_path: Path) -> None:
    (tmp_path / "vm").mkdir()
    (tmp_path / "vm" / "stack.yaml").write_text(LABVM)
    vms = bundle_contents(load_stack(str(tmp_path / "vm")), load_versions())
    assert set(VM_PACKAGES) <= set(vms.lab_packages)
    containers = bundle_contents(load_stack(str(REPO / "stacks" / "lab")), load_versions())
    assert containers.lab_packages and not set(VM_PACKAGES) & set(containers.lab_packages), (
        "nspawn machines boot the host's kernel; their bundle carries none")


BUILD = """
import sys
from pathlib import Path
from rich.console import Console
from podium.lab.image import bundle_recipe
from podium.lab.vmimage import VmImageRecipe, build_vm_image
repo, cache = Path(sys.argv[1]), Path(sys.argv[2])
recipe = VmImageRecipe(base=bundle_recipe(repo))
print(build_vm_image(cache, recipe=recipe, repository=repo, console=Console(stderr=True)))
"""


@pytest.mark.skipif(os.geteuid() != 0, reason="debootstrap and chroot need root")
def test_the_vm_image_builds_from_the_bundle_with_no_network(tmp_path: Path) -> None:
    (tmp_path / "vm").mkdir()
    (tmp_path / "vm" / "stack.yaml").write_text(LABVM)
    stack = load_stack(str(tmp_path / "vm"))
    repo, gnupg = tmp_path / "bundle" / "apt", tmp_path / "gnupg"
    debs.bundle_key(gnupg, stack.name)
    # What `podium bundle` lays into apt/ for this stack's lab images (its pins need no more).
    debs.build_repository(repo, {}, [*debs.required_packages(), *lab_packages(stack)], gnupg)

    # A namespace with only a loopback that is down: any fetch from outside the bundle fails.
    built = subprocess.run(["unshare", "--net", sys.executable, "-c", BUILD, str(repo), str(tmp_path / "images")],
                           capture_output=True, text=True, timeout=1500)
    assert built.returncode == 0, built.stderr[-3000:]
    image = Path(built.stdout.strip().splitlines()[-1])
    assert image.is_file() and image.parent == tmp_path / "images"

    raw, root = tmp_path / "disk.raw", tmp_path / "root.ext4"
    subprocess.run(["qemu-img", "convert", "-f", "qcow2", "-O", "raw", str(image), str(raw)], check=True)
    subprocess.run(["dd", f"if={raw}", f"of={root}", "bs=1M", "skip=1", "conv=sparse", "status=none"], check=True)

    def debugfs(request: str) -> str:
        return subprocess.run(["debugfs", "-R", request, str(root)], capture_output=True, text=True,
                              check=True).stdout

    recipe = json.loads(debugfs("cat /etc/podium-image.json"))
    assert recipe["base"]["mirror"].startswith("bundle:"), recipe["base"]
    assert "vmlinuz-" in debugfs("ls /boot"), "the image has no kernel"
    assert "podium-bundle-build" not in debugfs("ls /etc/apt"), "the build's apt source stayed in the image"
