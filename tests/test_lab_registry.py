"""The labreg lab end to end: three machines, a GlusterFS volume replicated over node1 and node2
and mounted on all three, the TLS registry on ctrl with its data on that volume, the stack's
tiny GGUF pushed by `podium up`, then read back with `podium model ls/show`."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from podium.registry.access import pull_credential, registry_ca
from podium.registry.sync import sync_models
from podium.stack import load_stack
from podium.stack.model import Stack
from podium.stack.sections import Engine
from tests.fixtures_lab import require_lab_host

STACK_DIR = Path(__file__).parent / "stacks" / "labreg"
PODIUM = [sys.executable, "-m", "podium"]


def _podium(*args: str, env: dict[str, str] | None = None, timeout: int = 900) -> str:
    result = subprocess.run(
        [*PODIUM, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )
    command = " ".join(args)
    assert result.returncode == 0, f"podium {command} failed:\n{result.stdout}\n{result.stderr[-4000:]}"
    return result.stdout


def _on(node: str, command: str) -> str:
    return _podium("lab", "ssh", node, "--stack", str(STACK_DIR), "--", command, timeout=60)


@pytest.fixture(scope="module")
def lab() -> Iterator[Stack]:
    require_lab_host()
    stack = load_stack(str(STACK_DIR))
    try:
        started = time.monotonic()
        # Machines, `podium up` (base, storage, registry, model push) and `podium verify`.
        _podium("lab", "up", str(STACK_DIR))
        print(f"\nlab up + verify of labreg: {time.monotonic() - started:.0f} s")
        yield stack
    finally:
        subprocess.run([*PODIUM, "lab", "down", str(STACK_DIR)], capture_output=True, timeout=300)


@pytest.mark.lab
@pytest.mark.timeout(1200)
def test_up_pushed_the_stacks_model_and_model_ls_and_show_find_it(lab: Stack) -> None:
    pull = pull_credential(lab.name)
    env = {"PODIUM_REGISTRY_USER": pull.user, "PODIUM_REGISTRY_PASSWORD": pull.password}
    ca = str(registry_ca(lab.name))
    listed = json.loads(_podium("model", "ls", "--stack", str(STACK_DIR), "--ca", ca, "--json", env=env))
    tags = {t["tag"]: t["digest"] for t in listed if t["name"] == "tiny-llama"}
    assert set(tags) == {"1", "stable"} and tags["1"] == tags["stable"], listed
    show = ["model", "show", "tiny-llama:stable", "--stack", str(STACK_DIR), "--ca", ca, "--json"]
    shown = json.loads(_podium(*show, env=env))
    assert shown["format"] == "gguf" and shown["digest"] == tags["1"]
    # What engines will be pinned to: an engine on the alias resolves to the pushed digest.
    engine = Engine(name="probe", kind="llamacpp", model="tiny-llama:stable", nodes=["node1"])
    with_engine = lab.model_copy(update={"engines": [engine]})
    assert sync_models(with_engine, push=False) == {"tiny-llama:stable": tags["1"]}
    # A second push finds everything in place.
    assert sync_models(with_engine, push=True) == {"tiny-llama:stable": tags["1"]}
    # The registry's blobs sit in the replicated volume: on both bricks.
    blob = shown["files"][0]["sha256"]
    path = f"/srv/bricks/podium/brick/registry/docker/registry/v2/blobs/sha256/{blob[:2]}/{blob}/data"
    for node in ("node1", "node2"):
        assert _on(node, f"sha256sum {path}").split()[0] == blob, f"blob not on the brick of {node}"


@pytest.mark.lab
@pytest.mark.timeout(1200)
def test_a_file_written_on_one_node_reads_back_on_the_others(lab: Stack) -> None:
    name = f"/srv/podium/lab-test-{secrets.token_hex(4)}"
    text = secrets.token_hex(8)
    _on("node2", f"echo {text} > {name}")
    try:
        for node in ("ctrl", "node1"):
            assert _on(node, f"cat {name}").strip() == text, f"{node} does not see {name}"
    finally:
        _on("node2", f"rm -f {name}")
