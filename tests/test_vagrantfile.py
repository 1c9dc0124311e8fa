"""The Vagrantfile validates and brings up exactly the machines the stack declares."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

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
    return subprocess.run(
        ["vagrant", *args], capture_output=True, text=True, env=environment, cwd=tmp_path
    )


def test_vagrantfile_validates_with_the_lab_stack(tmp_path: Path) -> None:
    if not (REPO / "stacks" / "lab" / "stack.yaml").exists():
        pytest.skip("stacks/lab/stack.yaml is not there yet")
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
