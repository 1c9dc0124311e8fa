"""Releases on real lab machines: up (release 1); an upgrade (a firewall opening, a new model
version and engine arg) killed after its first component, then re-run to convergence (release 2);
a rollback (release 3) after which the node serves release 1's model digest and config again,
and, last, once a gateway is added, one typed into its console as `podium console` serves it
on 127.0.0.1, then a run killed while the gateway holds the changed replica drained, whose
re-run puts the replica back.
Two more upgrades are killed, one in the middle of the engine role (its new model pulled, its
replica not yet restarted) and one after every component is laid down and recorded on the node
but before the release is; each re-run converges to one new release."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import yaml

from podium.drivers.nspawn import NspawnDriver
from podium.gateway_access import ADMIN_TOKEN
from podium.render import REPO
from podium.secrets import StackSecrets
from tests.fixtures_console import ConsoleClient
from tests.fixtures_gateway import free_port
from tests.fixtures_lab import UniqueStack, podium, remove_stack_state, require_lab_host, unique_stack

pytestmark = pytest.mark.lab

UNIT = "podium-llamacpp-tiny-llama-cpp-0.service"


def ok(done: subprocess.CompletedProcess[str], what: str) -> str:
    assert done.returncode == 0, f"{what} failed ({done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-5000:]}"
    return done.stdout


def on_node(stack: UniqueStack, command: str) -> str:
    return ok(podium("lab", "ssh", "node1", "--stack", str(stack.folder), "--", command, timeout=60),
              f"`{command}` on node1")


def served(stack: UniqueStack) -> str:
    """The command line of the llama-server the replica's unit runs now."""
    pid = on_node(stack, f"systemctl show -p MainPID --value {UNIT}").strip()
    assert pid not in ("", "0"), f"{UNIT} is not running"
    return on_node(stack, f"tr '\\0' ' ' < /proc/{pid}/cmdline")


def node_root(stack: UniqueStack) -> Path:
    """node1's filesystem as this machine sees it (the machine's merged overlay): what the role
    has done there is read without an SSH round trip, so a kill lands where it is meant to."""
    return NspawnDriver().machine_dir(stack.name, "node1") / "root"


def killed_up(stack: UniqueStack, due: Callable[[str], bool]) -> str:
    """Start `podium up`, SIGKILL it (and what it started) as soon as `due(its log so far)` holds;
    its log. Fails when the run ended first."""
    log = stack.folder / "killed-up.log"
    with log.open("w") as stderr:
        run = subprocess.Popen([sys.executable, "-m", "podium", "up", str(stack.folder)], cwd=REPO,
                               stdout=subprocess.DEVNULL, stderr=stderr, start_new_session=True)
        try:
            deadline = time.monotonic() + 600
            while time.monotonic() < deadline and run.poll() is None and not due(log.read_text()):
                time.sleep(0.02)
            assert run.poll() is None, f"podium up ended before it could be killed:\n{log.read_text()[-3000:]}"
            os.killpg(run.pid, signal.SIGKILL)
        finally:
            run.wait(timeout=60)
    return log.read_text()


def history(stack: UniqueStack) -> list[dict]:
    return json.loads(ok(podium("history", str(stack.folder), "--json", timeout=60), "podium history"))


def model_entries(stack: UniqueStack) -> set[str]:
    listing = on_node(stack, "ls -1 /var/lib/podium/models")
    return {line for line in listing.split() if line.startswith("sha256:") and "." not in line}


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[UniqueStack]:
    require_lab_host()
    stack = unique_stack(REPO / "tests" / "stacks" / "labrel", tmp_path_factory.mktemp("releases"))
    try:
        ok(podium("lab", "up", str(stack.folder), timeout=1800), "podium lab up")
        yield stack
    finally:
        down = podium("lab", "down", str(stack.folder), timeout=600)
        if down.returncode == 0:
            remove_stack_state(stack.name)
        assert down.returncode == 0, down.stderr


def upgrade(stack: UniqueStack) -> None:
    """Release 2's stack: an opening in node1's firewall (so base runs before the engine), and
    tiny-llama version 2 with a larger context."""
    path = stack.folder / "stack.yaml"
    data = yaml.safe_load(path.read_text())
    data.setdefault("network", {})["openings"] = [{"port": 9099, "nodes": ["node1"], "sources": ["ctrl"]}]
    data["models"].append({**data["models"][0], "version": "2"})
    data["engines"][0]["model"] = "tiny-llama:2"
    data["engines"][0]["args"]["ctx-size"] = 512
    path.write_text(yaml.safe_dump(data, sort_keys=False))


def test_upgrade_killed_halfway_converges_then_rollback_restores_release_1(lab: UniqueStack) -> None:
    timings: dict[str, float] = {}
    first = history(lab)
    assert [r["number"] for r in first] == [1], first
    digest_1 = first[0]["models"]["tiny-llama:1"]
    assert digest_1 in served(lab) and "--ctx-size 256" in served(lab)
    on_node(lab, "test -f /var/lib/podium/releases/0001.json && test -f /var/lib/podium/releases/current.json")

    upgrade(lab)
    preview = podium("up", str(lab.folder), "--dry-run", timeout=600)
    assert "release 2 would result:" in ok(preview, "podium up --dry-run") + preview.stderr
    assert "node1: base, engine-llamacpp" in preview.stderr, preview.stderr

    # Kill the upgrade once its first component (base) is done and the engine's is under way.
    start = time.monotonic()
    log = killed_up(lab, lambda text: "base: changed" in text)
    assert "engine-llamacpp" not in log, log
    assert [r["number"] for r in history(lab)] == [1], "a killed run recorded a release"

    ok(podium("up", str(lab.folder), timeout=1800), "podium up after the kill")
    timings["upgrade (re-run after the kill)"] = time.monotonic() - start
    second = history(lab)
    assert [r["number"] for r in second] == [1, 2]
    digest_2 = second[1]["models"]["tiny-llama:2"]
    assert digest_2 != digest_1
    assert digest_2 in served(lab) and "--ctx-size 512" in served(lab)
    again = podium("up", str(lab.folder), timeout=600)
    assert "release 2: unchanged" in ok(again, "podium up with nothing to do") + again.stderr

    start = time.monotonic()
    back = podium("rollback", str(lab.folder), timeout=1800)
    assert "release: 3" in ok(back, "podium rollback")
    timings["rollback to release 1"] = time.monotonic() - start
    third = history(lab)
    assert [(r["number"], r["kind"]) for r in third] == [(1, "up"), (2, "up"), (3, "rollback to 1")]
    assert third[2]["hosts"] == third[0]["hosts"], "the rollback did not lay release 1 down again"
    command = served(lab)
    assert digest_1 in command and "--ctx-size 256" in command, command
    node_record = json.loads(on_node(lab, "cat /var/lib/podium/releases/current.json"))
    assert node_record["number"] == 3 and node_record["components"] == third[0]["hosts"]["node1"]
    # keep: 2 keeps releases 2 and 3 on the node, and so both models.
    assert {digest_1, digest_2} <= model_entries(lab)
    ok(podium("verify", str(lab.folder), timeout=600), "podium verify after the rollback")
    # apt on the nodes takes a lower pinned version under -y, as a rollback of a pin needs.
    assert 'APT::Get::allow-downgrades "true"' in on_node(lab, "apt-config dump")

    # Release 2's stack again, keeping one release: release 1's model leaves the node.
    path = lab.folder / "stack.yaml"
    path.write_text(path.read_text() + "releases: {keep: 1}\n")
    ok(podium("up", str(lab.folder), timeout=1800), "podium up with releases.keep 1")
    assert [r["number"] for r in history(lab)] == [1, 2, 3, 4]
    assert model_entries(lab) == {digest_2}
    assert digest_2 in served(lab)
    print("\n".join(f"{k}: {v:.0f} s" for k, v in timings.items()))


def engine_recorded(stack: UniqueStack) -> str:
    """The config digest node1's recorded state holds for its engine ("" while it cannot be read:
    the role writes the file whole, but a read may meet it half written)."""
    try:
        state = json.loads((node_root(stack) / "var/lib/podium/state.json").read_text())
    except (OSError, ValueError):
        return ""
    return str(state["components"].get("engine-llamacpp", {}).get("config_hash", ""))


def pulled(stack: UniqueStack) -> set[str]:
    return {p.name for p in (node_root(stack) / "var/lib/podium/models").glob("sha256:*") if "." not in p.name}


def converges(stack: UniqueStack, number: int) -> None:
    """A re-run records release `number`, once; a run after it changes nothing."""
    ok(podium("up", str(stack.folder), timeout=1800), "podium up after the kill")
    assert [r["number"] for r in history(stack)][-1] == number, "the re-run did not record one release"
    again = podium("up", str(stack.folder), timeout=600)
    assert f"release {number}: unchanged" in ok(again, "podium up with nothing to do") + again.stderr
    assert [r["number"] for r in history(stack)][-1] == number, "a run that changed nothing recorded a release"


def test_kills_inside_the_engine_role_and_before_the_release_converge(lab: UniqueStack) -> None:
    timings: dict[str, float] = {}
    current = history(lab)[-1]["number"]  # whichever release the test before left current
    path = lab.folder / "stack.yaml"
    data = yaml.safe_load(path.read_text())
    data["models"].append({**data["models"][0], "version": "3"})
    data["engines"][0]["model"] = "tiny-llama:3"
    path.write_text(yaml.safe_dump(data, sort_keys=False))

    # Kill 2: in the middle of the engine role, once its new model is on the node and before the
    # role ends (it records its state last, after the replica restarted and was ready).
    start, had, recorded = time.monotonic(), pulled(lab), engine_recorded(lab)
    log = killed_up(lab, lambda _: bool(pulled(lab) - had))
    assert engine_recorded(lab) == recorded, "the engine role ended before the kill:\n" + log[-3000:]
    assert history(lab)[-1]["number"] == current, "a killed run recorded a release"
    converges(lab, current + 1)
    timings["upgrade killed in the engine role, re-run"] = time.monotonic() - start
    release = history(lab)[-1]
    digest_3 = release["models"]["tiny-llama:3"]
    assert digest_3 in served(lab)
    assert json.loads(on_node(lab, "cat /var/lib/podium/releases/current.json"))["number"] == current + 1

    # Kill 3: every component laid down and recorded on its node, the release not yet recorded
    # (podium up is checking the changed replica's readiness, then records the release).
    data["engines"][0]["args"]["ctx-size"] = 384
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    start, recorded = time.monotonic(), engine_recorded(lab)
    log = killed_up(lab, lambda _: engine_recorded(lab) not in ("", recorded))
    assert history(lab)[-1]["number"] == current + 1, "the kill came after the release was recorded:\n" + log[-3000:]
    converges(lab, current + 2)
    timings["upgrade killed before its release, re-run"] = time.monotonic() - start
    command = served(lab)
    assert digest_3 in command and "--ctx-size 384" in command, command
    assert json.loads(on_node(lab, "cat /var/lib/podium/releases/current.json"))["number"] == current + 2
    ok(podium("verify", str(lab.folder), timeout=600), "podium verify after the re-runs")
    print("\n".join(f"{k}: {v:.0f} s" for k, v in timings.items()))


def test_a_rollback_typed_in_podium_console_runs_on_the_control_machine(lab: UniqueStack) -> None:
    # Last: the console is the gateway's, and the runs killed above run without one. A gateway
    # on ctrl, then a release after it to roll back from.
    path = lab.folder / "stack.yaml"
    data = yaml.safe_load(path.read_text())
    data["gateway"] = {"nodes": ["ctrl"], "port": 8443}
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    ok(podium("up", str(lab.folder), timeout=1800), "podium up with a gateway")
    ctx = data["engines"][0]["args"]["ctx-size"]
    data["engines"][0]["args"]["ctx-size"] = ctx + 64
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    ok(podium("up", str(lab.folder), timeout=1800), "podium up of another ctx-size")
    before = history(lab)
    target, number = before[-2], before[-1]["number"]
    assert f"--ctx-size {ctx + 64}" in served(lab)
    port, log = free_port(), lab.folder / "podium-console.log"
    with log.open("w") as output:
        console = subprocess.Popen([sys.executable, "-m", "podium", "console", str(lab.folder),
                                    "--port", str(port)], cwd=REPO, stdout=output, stderr=output)
    try:
        operator = ConsoleClient(port, timeout=1800)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and console.poll() is None:
            try:
                if operator.call("GET", "/console/login").status == 200:
                    break
            except OSError:
                time.sleep(0.2)
        assert f"open http://127.0.0.1:{port}/console/" in log.read_text(), log.read_text()
        assert operator.login(StackSecrets(lab.name).token(ADMIN_TOKEN)).status == 303
        csrf = operator.csrf("/console/releases")
        wrong = operator.call("POST", "/console/releases/rollback",
                              {"csrf": csrf, "to": str(target["number"]), "confirm": "roll back to 1"})
        assert wrong.status == 400 and history(lab) == before, wrong
        start = time.monotonic()
        done = operator.call("POST", "/console/releases/rollback",
                             {"csrf": csrf, "to": str(target["number"]),
                              "confirm": f"roll back to {target['number']}"})
        took = time.monotonic() - start
    finally:
        console.terminate()
        console.wait(30)
    assert done.status == 200 and f"release: {number + 1}" in done.body, done.body[-3000:]
    assert f"back to release {target['number']}" in done.body.splitlines()[0], done.body[:500]
    after = history(lab)
    assert (after[-1]["number"], after[-1]["kind"]) == (number + 1, f"rollback to {target['number']}")
    assert after[-1]["hosts"] == target["hosts"], "the console's rollback did not lay its release down"
    assert f"--ctx-size {ctx}" in served(lab)
    audit = json.loads(ok(podium("audit", str(lab.folder), "--json", timeout=60), "podium audit"))
    assert [e["detail"]["release"] for e in audit if e["action"] == "stack.rollback"][-1] == number + 1
    print(f"rollback to release {target['number']} through podium console: {took:.0f} s")

    # A run killed once the engine's role has run, before the gateway takes its replica back:
    # the replica is left drained, and the re-run, which finds the engine unchanged, puts it back.
    data["engines"][0]["args"]["ctx-size"] = ctx + 128
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    recorded = engine_recorded(lab)
    log = killed_up(lab, lambda _: engine_recorded(lab) not in ("", recorded))
    assert drained_on_gateway(lab), "the kill did not leave the replica drained:\n" + log[-3000:]
    rerun = podium("up", str(lab.folder), timeout=1800)
    assert "left drained by an earlier run" in ok(rerun, "podium up after the kill") + rerun.stderr
    assert not drained_on_gateway(lab), "the re-run left the replica drained"
    ok(podium("verify", str(lab.folder), timeout=600), "podium verify after the re-run")


def drained_on_gateway(stack: UniqueStack) -> list[str]:
    """The replicas the stack's gateway keeps drained now, read on its control listener."""
    from podium.registry.ca import ca_certificate
    from podium.services.gateway.client import ReplicaAdmin
    from podium.stack.loader import load_stack

    loaded = load_stack(stack.folder)
    gw = loaded.gateway
    assert gw is not None
    api = ReplicaAdmin(f"https://{loaded.node(gw.nodes[0]).address}:{gw.control_port}",
                       StackSecrets(stack.name).token(ADMIN_TOKEN), timeout=30,
                       ca_file=ca_certificate(stack.name))
    return [r["replica"] for r in api.replicas() if r["drained"]]
