"""`podium inventory`: the pyinfra inventory of any stack, enough for plain `pyinfra` to run a role
on a bare-metal node over SSH."""

from __future__ import annotations

import os
import runpy
import subprocess
import sys
from pathlib import Path

import pytest

from tests.fixtures_sshd import Sshd

REPO = Path(__file__).resolve().parents[1]
PYINFRA = Path(sys.executable).with_name("pyinfra")


def run(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, env=env, cwd=REPO, timeout=600)


def state_env(tmp_path: Path) -> dict[str, str]:
    return {**os.environ, "PODIUM_STATE_DIR": str(tmp_path / "state")}


def metal_stack(folder: Path, sshd: Sshd) -> Path:
    """One bare-metal node: this machine's loopback through the test's own sshd."""
    folder.mkdir()
    (folder / "stack.yaml").write_text(
        "name: metal\n"
        "description: One bare-metal node reached over SSH\n"
        "nodes:\n"
        f"  - {{name: metal1, address: 127.0.0.1, ssh: {{user: root, port: {sshd.port}, key: {sshd.key}}}}}\n"
        "network: {admin_sources: [127.0.0.0/8]}\n"
        "storage: {driver: local, nodes: [metal1], mount: /srv/podium}\n"
    )
    return folder


def test_inventory_of_the_hybrid_stack_places_every_component_and_reaches_bare_metal_by_its_address(
    tmp_path: Path,
) -> None:
    env = state_env(tmp_path)
    target = tmp_path / "inventory" / "hybrid.py"
    done = run(sys.executable, "-m", "podium", "inventory", "stacks/hybrid", "--out", str(target), env=env)
    assert done.returncode == 0, done.stderr
    groups = runpy.run_path(str(target))
    hosts = {name: data for group in ("base", "gpu", "gateway") for name, data in groups[group]}
    assert {name for name, _ in groups["base"]} == {"gpu1", "gpu2", "vm-ctrl", "vm-store1", "vm-store2"}
    assert {name for name, _ in groups["gateway"]} == {"vm-ctrl", "gpu1"}
    assert hosts["gpu1"]["ssh_hostname"] == "203.0.113.11"
    assert hosts["gpu1"]["podium_gpu"], "gpu1's gpu settings are missing"
    # The roles read the stack CA on the control machine: the inventory made it, 0600.
    ca = tmp_path / "state" / "hybrid" / "ca" / "ca.crt"
    assert ca.is_file() and ca.stat().st_mode & 0o077 == 0


def test_inventory_out_a_folder_is_refused_in_one_sentence(tmp_path: Path) -> None:
    done = run(sys.executable, "-m", "podium", "inventory", "stacks/hybrid", "--out", str(tmp_path),
               env=state_env(tmp_path))
    assert done.returncode == 2
    assert f"--out {tmp_path}: is a folder" in done.stderr and "Traceback" not in done.stderr


@pytest.mark.timeout(600)
def test_plain_pyinfra_runs_two_roles_on_a_bare_metal_node_from_the_written_inventory(
    tmp_path: Path, sshd: Sshd
) -> None:
    env = state_env(tmp_path)
    stack = metal_stack(tmp_path / "metal", sshd)
    podium = (sys.executable, "-m", "podium")
    # Trust on first use, as an operator records a bare-metal node's host key (port included).
    trusted = run(*podium, "lab", "trust", str(stack), env=env)
    assert trusted.returncode == 0, trusted.stderr
    inventory = tmp_path / "inventory" / "metal.py"
    written = run(*podium, "inventory", str(stack), "--out", str(inventory), env=env)
    assert written.returncode == 0, written.stderr
    before = sshd.logins()
    for role in ("base", "storage"):
        # --dry: the node is this machine, which the test does not own; the role still connects,
        # reads every fact it needs over SSH and prepares its operations.
        done = run(str(PYINFRA), "-y", "--dry", str(inventory), f"roles/{role}/deploy.py", env=env)
        said = done.stdout + done.stderr
        assert done.returncode == 0 and f"[metal1] Ready: roles/{role}/deploy.py" in said, said
    assert sshd.logins() >= before + 2, "pyinfra did not log in through the inventory's key"


def test_a_node_whose_host_key_is_not_trusted_is_not_reached(tmp_path: Path, sshd: Sshd) -> None:
    env = state_env(tmp_path)
    stack = metal_stack(tmp_path / "metal", sshd)
    inventory = tmp_path / "metal.py"
    written = run(sys.executable, "-m", "podium", "inventory", str(stack), "--out", str(inventory), env=env)
    assert written.returncode == 0, written.stderr
    done = run(str(PYINFRA), "-y", "--dry", str(inventory), "roles/base/deploy.py", env=env)
    assert done.returncode != 0 and sshd.logins() == 0
