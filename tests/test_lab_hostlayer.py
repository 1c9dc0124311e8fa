"""The host layer end to end on real nspawn machines: lab up provisions and verifies base and
network, a second `podium up` changes nothing, a run killed midway converges on the next one,
and `lab down` leaves nothing behind."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.fixtures_lab import podium, require_lab_host

STACK = Path(__file__).parent / "stacks" / "labhost"
PODIUM = [sys.executable, "-m", "podium"]

pytestmark = pytest.mark.lab



def leftovers() -> list[str]:
    found = []
    netns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    found += [f"netns {line.split()[0]}" for line in netns.splitlines() if "pdm-labhost" in line]
    if subprocess.run(["ip", "link", "show", "pdm-labhost"], capture_output=True).returncode == 0:
        found.append("bridge pdm-labhost")
    mounts = Path("/proc/mounts").read_text()
    found += [f"mount {m.split()[1]}" for m in mounts.splitlines() if "/lab/labhost/" in m]
    tables = subprocess.run(["nft", "list", "tables"], capture_output=True, text=True).stdout
    found += [f"nft {t}" for t in tables.splitlines() if "podium_labhost" in t]
    procs = subprocess.run(["pgrep", "-af", "pdm-labhost"], capture_output=True, text=True).stdout
    found += [f"process {p}" for p in procs.splitlines()]
    return found


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    require_lab_host()
    try:
        result = podium("lab", "up", str(STACK))
        assert result.returncode == 0, result.stdout + result.stderr
        yield result
    finally:
        down = podium("lab", "down", str(STACK))
        assert down.returncode == 0, down.stderr
    assert leftovers() == []


def test_lab_up_provisions_and_verifies(lab):
    assert "changes: " in lab.stdout
    assert "✓ verify base on node2" in lab.stderr


def test_verify_json_reports_every_component_and_host(lab):
    result = podium("verify", str(STACK), "--json")
    assert result.returncode == 0, result.stderr
    outcomes = json.loads(result.stdout)
    pairs = {(o["component"], o["host"]) for o in outcomes}
    assert pairs == {("base", "ctrl"), ("base", "node1"), ("base", "node2"), ("network", "node1"), ("network", "node2")}
    assert all(o["passed"] and o["tests"] > 0 and o["failures"] == [] for o in outcomes)


def test_second_up_changes_nothing(lab):
    result = podium("up", str(STACK))
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().endswith("changes: 0")
    reapplied = podium("up", str(STACK), "--reapply")
    assert reapplied.stdout.strip().endswith("changes: 0"), reapplied.stderr


def test_up_killed_midway_converges(lab, tmp_path):
    changed = tmp_path / "stack.yaml"
    changed.write_text(STACK.joinpath("stack.yaml").read_text().replace("port: 7000", "port: 7001"))
    proc = subprocess.Popen([*PODIUM, "up", str(changed)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            start_new_session=True)
    time.sleep(4)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    again = podium("up", str(changed))
    assert again.returncode == 0, again.stderr
    assert podium("up", str(changed)).stdout.strip().endswith("changes: 0")
    verified = podium("verify", str(changed), "--json")
    assert verified.returncode == 0, verified.stdout + verified.stderr
    rules = podium("lab", "ssh", "node1", "--stack", str(changed), "--", "nft", "list", "ruleset").stdout
    assert "tcp dport 7001 accept" in rules and "7000" not in rules


def test_verify_fails_and_names_the_broken_thing(lab):
    """A verify that cannot fail proves nothing: break the firewall on one node and watch it fail."""
    podium("lab", "ssh", "node2", "--stack", str(STACK), "--", "nft", "flush", "ruleset")
    try:
        result = podium("verify", str(STACK), "--json")
        assert result.returncode == 1
        failed = [o for o in json.loads(result.stdout) if not o["passed"]]
        assert [(o["component"], o["host"]) for o in failed] == [("base", "node2")]
        assert any("firewall" in f for f in failed[0]["failures"])
    finally:
        podium("up", str(STACK), "--reapply", "--only", "base", "--limit", "node2")
