"""Rolling, drained engine changes on real lab machines, under a steady stream of requests.

Two llama.cpp replicas on two machines behind one gateway (a copy of tests/stacks/labroll under
a name and subnet of its own). While the official `openai` client sends chat and streamed chat
requests through the gateway (no client retries, bounded in count and time): (a) a change of the
engine's args rolls replica by replica with no failed request; (b) an arg the new llama-server
cannot start with stops the run at the first replica, the other keeps serving the previous
release with no failed request, and the error names the replica and `podium rollback`.
"""

from __future__ import annotations

import ssl
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import yaml

from podium.render import REPO
from tests.fixtures_lab import UniqueStack, podium, remove_stack_state, require_lab_host, unique_stack

pytestmark = pytest.mark.lab

SOURCE = REPO / "tests" / "stacks" / "labroll"
ENGINE = "tiny-llama-cpp"
UNITS = {"node1": f"podium-llamacpp-{ENGINE}-0.service", "node2": f"podium-llamacpp-{ENGINE}-1.service"}
MAX_REQUESTS = 20000  # per load, all clients together
MAX_LOAD_S = 900.0
# A steady stream, not a flood: the bound on requests must outlast a roll on a busy machine.
PAUSE_S = 0.05


def line(output: str, prefix: str) -> str:
    found = [x.removeprefix(prefix).strip() for x in output.splitlines() if x.startswith(prefix)]
    assert found, f"no line starting {prefix!r} in:\n{output}"
    return found[-1]


@dataclass
class Load:
    """Two clients, each sending chat then streamed chat in turn until stopped (or the bounds)."""

    client: openai.OpenAI
    ok: int = 0
    failures: list[str] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)
    threads: list[threading.Thread] = field(default_factory=list)

    def start(self) -> Load:
        self.threads = [threading.Thread(target=self._run, daemon=True) for _ in range(2)]
        for t in self.threads:
            t.start()
        return self

    def finish(self) -> tuple[int, list[str]]:
        self.stop.set()
        for t in self.threads:
            t.join(120)
        return self.ok, self.failures

    def _run(self) -> None:
        deadline = time.monotonic() + MAX_LOAD_S
        n = 0
        while not self.stop.is_set() and time.monotonic() < deadline:
            if self.ok + len(self.failures) >= MAX_REQUESTS:
                break
            n += 1
            try:
                self._one(stream=n % 2 == 0)
                self.ok += 1
            except Exception as exc:  # noqa: BLE001 - every failure is counted and shown
                self.failures.append(f"{time.strftime('%H:%M:%S')} {type(exc).__name__}: {exc}")
            time.sleep(PAUSE_S)

    def _one(self, stream: bool) -> None:
        messages: Any = [{"role": "user", "content": "Say hello"}]
        if not stream:
            answer = self.client.chat.completions.create(model="tiny-llama", messages=messages,
                                                         max_tokens=8)
            assert answer.choices, "an answer without choices"
            return
        chunks = self.client.chat.completions.create(model="tiny-llama", messages=messages,
                                                     max_tokens=8, stream=True)
        finished = False
        for chunk in chunks:
            finished = finished or any(c.finish_reason for c in chunk.choices)
        assert finished, "a stream that ended without a finish_reason"


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    require_lab_host()
    copy: UniqueStack = unique_stack(SOURCE, tmp_path_factory.mktemp("rolling"))
    folder = str(copy.folder)
    try:
        up = podium("lab", "up", folder)
        assert up.returncode == 0, up.stdout[-3000:] + up.stderr[-5000:]
        trust = ssl.create_default_context(cafile=line(up.stdout, "ca: "))
        client = openai.OpenAI(base_url=line(up.stdout, "gateway: "), api_key=line(up.stdout, "key: "),
                               max_retries=0, timeout=60, http_client=httpx.Client(verify=trust))
        yield {"copy": copy, "folder": copy.folder, "client": client, "figures": {}}
    finally:
        down = podium("lab", "down", folder, timeout=600)
        if down.returncode == 0:
            remove_stack_state(copy.name)
        assert down.returncode == 0, down.stderr


def with_args(lab: dict[str, Any], into: Path, **args: Any) -> str:
    """The lab's stack file with the engine's args changed, written as a stack folder of its own."""
    declared = yaml.safe_load((lab["folder"] / "stack.yaml").read_text())
    engine = next(e for e in declared["engines"] if e["name"] == ENGINE)
    engine["args"].update(args)
    folder = into / lab["copy"].name
    folder.mkdir()
    (folder / "stack.yaml").write_text(yaml.safe_dump(declared, sort_keys=False))
    return str(folder)


def unit(lab: dict[str, Any], node: str) -> dict[str, str]:
    shown = podium("lab", "ssh", node, "--stack", str(lab["folder"]), "--",
                   f"systemctl show -p MainPID -p ExecStart -p ActiveEnterTimestamp {UNITS[node]}",
                   timeout=60)
    assert shown.returncode == 0, shown.stderr
    return dict(x.split("=", 1) for x in shown.stdout.splitlines() if "=" in x)


def test_an_args_change_rolls_replica_by_replica_with_no_failed_request(lab: dict[str, Any],
                                                                        tmp_path: Path) -> None:
    before = {node: unit(lab, node) for node in UNITS}
    changed = with_args(lab, tmp_path, **{"ctx-size": 768})
    load = Load(lab["client"]).start()
    time.sleep(3)
    began = time.monotonic()
    up = podium("up", changed)
    took = time.monotonic() - began
    time.sleep(3)
    ok, failures = load.finish()
    assert ok + len(failures) < MAX_REQUESTS, "the load ended before the roll did"
    lab["figures"]["roll (a)"] = (took, ok, len(failures))
    print(f"\nrolling args change: {took:.1f} s, {ok} requests ok, {len(failures)} failed")
    print("\n".join(x for x in (up.stdout + up.stderr).splitlines() if " on node" in x))
    assert up.returncode == 0, up.stdout[-3000:] + up.stderr[-5000:]
    assert not failures, f"{len(failures)} of {ok + len(failures)} requests failed:\n" + "\n".join(failures[:10])
    assert ok >= 20, f"only {ok} requests were sent during the roll"

    output = up.stdout + up.stderr
    first = output.index(f"engine-llamacpp on node1: drained {ENGINE}/0")
    second = output.index(f"engine-llamacpp on node2: drained {ENGINE}/1")
    assert first < second, output
    after = {node: unit(lab, node) for node in UNITS}
    for node in UNITS:
        assert after[node]["MainPID"] != before[node]["MainPID"], f"{UNITS[node]} was not restarted"
        assert "--ctx-size 768" in after[node]["ExecStart"], after[node]["ExecStart"]
    # One at a time: the second replica restarted only once the first one was serving again.
    assert after["node2"]["ActiveEnterTimestamp"] > after["node1"]["ActiveEnterTimestamp"]


def test_a_replica_that_fails_readiness_stops_the_roll_and_the_other_keeps_serving(
    lab: dict[str, Any], tmp_path: Path
) -> None:
    before = {node: unit(lab, node) for node in UNITS}
    # llama-server refuses to start with a flag it does not know.
    broken = with_args(lab, tmp_path, **{"ctx-size": 768, "no-such-flag": 1})
    load = Load(lab["client"]).start()
    time.sleep(3)
    began = time.monotonic()
    up = podium("up", broken)
    took = time.monotonic() - began
    time.sleep(5)  # the other replica still serves after the run has stopped
    ok, failures = load.finish()
    assert ok + len(failures) < MAX_REQUESTS, "the load ended before the failed roll did"
    lab["figures"]["roll (b)"] = (took, ok, len(failures))
    print(f"\nfailed roll: stopped after {took:.1f} s, {ok} requests ok, {len(failures)} failed")
    print("\n".join(x for x in (up.stdout + up.stderr).splitlines() if "error:" in x))

    output = up.stdout + up.stderr
    assert up.returncode == 1, output[-5000:]
    assert f"{ENGINE}/0 on node1" in output and "did not pass readiness" in output, output[-3000:]
    assert f"podium rollback {lab['copy'].name}" in output, output[-3000:]
    assert "engine-llamacpp on node2" not in output, "the roll went on past the failed replica"
    assert not failures, f"{len(failures)} of {ok + len(failures)} requests failed:\n" + "\n".join(failures[:10])
    assert ok >= 10, f"only {ok} requests were sent during the failed roll"
    node2 = unit(lab, "node2")
    assert node2["MainPID"] == before["node2"]["MainPID"], "node2's replica was touched"
    assert "--no-such-flag" not in node2["ExecStart"]
