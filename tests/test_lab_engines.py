"""The engine roles on real lab machines: llama.cpp and MLServer deployed from the registry,
verified, then one engine's args changed: only that engine's replicas restart."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from podium.plan.actions import make_plan
from podium.registry.sync import sync_models
from podium.render import REPO
from podium.stack import load_stack
from podium.stack.versions import load_versions
from podium.up import recorded_states
from tests.fixtures_lab import podium, require_lab_host

pytestmark = pytest.mark.lab

STACK = REPO / "tests" / "stacks" / "labeng"
CHANGED_ENGINE = "tiny-llama-cpp"
UNITS = {
    "node1": [
        "podium-llamacpp-tiny-llama-cpp-0.service",
        "podium-llamacpp-tiny-llama-cpp-1.service",
        "podium-llamacpp-tiny-llama-b-0.service",
    ],
    "node2": ["podium-predictive-iris-predictive-0.service"],
}



def _ok(done: subprocess.CompletedProcess[str], what: str) -> str:
    output = f"{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    assert done.returncode == 0, f"{what} failed ({done.returncode}):\n{output}"
    return done.stdout


def unit_states(stack: Path) -> dict[str, tuple[str, str]]:
    """unit → (MainPID, ActiveEnterTimestamp), read on the nodes themselves."""
    out = {}
    for node, units in UNITS.items():
        shown = _ok(podium("lab", "ssh", node, "--stack", str(stack), "--",
                           "systemctl show -p Id -p MainPID -p ActiveEnterTimestamp " + " ".join(units),
                           timeout=60), f"systemctl show on {node}")
        for block in shown.strip().split("\n\n"):
            fields = dict(line.split("=", 1) for line in block.splitlines() if "=" in line)
            out[fields["Id"]] = (fields["MainPID"], fields["ActiveEnterTimestamp"])
    return out


@pytest.fixture(scope="module")
def lab() -> Iterator[dict[str, float]]:
    """The labeng machines up, provisioned and verified; removed afterwards, also on failure."""
    require_lab_host()
    timings: dict[str, float] = {}
    try:
        start = time.monotonic()
        _ok(podium("lab", "up", str(STACK), timeout=1800), "podium lab up")
        timings["lab up (machines, base, registry, engines, verify)"] = time.monotonic() - start
        yield timings
    finally:
        podium("lab", "down", str(STACK), timeout=600)
        print("\n".join(f"{k}: {v:.0f} s" for k, v in timings.items()))


def test_engines_verify_after_lab_up(lab: dict[str, float]) -> None:
    outcomes = json.loads(_ok(podium("verify", str(STACK), "--json", timeout=600), "podium verify"))
    engines = {(o["component"], o["host"]): o for o in outcomes if o["component"].startswith("engine-")}
    assert set(engines) == {("engine-llamacpp", "node1"), ("engine-predictive", "node2")}
    failed = {k: o["failures"] for k, o in engines.items() if not o["passed"]}
    assert not failed, failed


def test_changing_one_engines_args_restarts_only_its_replicas(lab: dict[str, float], tmp_path: Path) -> None:
    before = unit_states(STACK)
    assert all(pid != "0" for pid, _ in before.values()), f"an engine unit is not running: {before}"

    declared = yaml.safe_load((STACK / "stack.yaml").read_text())
    engine = next(e for e in declared["engines"] if e["name"] == CHANGED_ENGINE)
    engine["args"]["threads"] = 2
    changed = tmp_path / "labeng"
    changed.mkdir()
    (changed / "stack.yaml").write_text(yaml.safe_dump(declared, sort_keys=False))

    # The plan `podium up` runs: recorded state from the nodes, model digests from the registry.
    stack = load_stack(str(changed))
    plan = make_plan(stack, load_versions(), recorded_states(stack), sync_models(stack, push=False))
    actions = {(a.component, a.host): a.action for a in plan}
    assert actions.pop(("engine-llamacpp", "node1")) == "reconfigure"
    assert set(actions.values()) == {"keep"}, f"more than the changed engine would change: {actions}"

    start = time.monotonic()
    _ok(podium("up", str(changed)), "podium up with the changed args")
    lab["podium up, one engine reconfigured"] = time.monotonic() - start

    after = unit_states(STACK)
    for unit in UNITS["node1"][:2]:
        assert after[unit][0] != before[unit][0], f"{unit} kept running with its old args"
    for unit in (UNITS["node1"][2], *UNITS["node2"]):
        assert after[unit] == before[unit], f"{unit} was restarted though its engine did not change"
    command = _ok(podium("lab", "ssh", "node1", "--stack", str(STACK), "--", "systemctl show -p ExecStart "
                         "--value podium-llamacpp-tiny-llama-cpp-0.service", timeout=60), "systemctl show")
    assert "--threads 2" in command

    _ok(podium("verify", str(changed), timeout=600), "podium verify after the change")
    start = time.monotonic()
    again = _ok(podium("up", str(changed)), "podium up a second time")
    lab["podium up, nothing to do"] = time.monotonic() - start
    assert "changes: 0" in again
