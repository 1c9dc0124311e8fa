"""Rolling, drained changes on real lab machines, under a steady stream of requests.

Two llama.cpp and two MLServer replicas on two machines behind one gateway (a copy of
tests/stacks/labroll under a name and subnet of its own). While the official `openai` client
sends chat and streamed chat requests through the gateway, and another client Open Inference
Protocol v2 inference on the scikit-learn model (no client retries, bounded in count and time):
(r) the lab goes from release A to B (a new version of the tiny-llama model, another MLServer
version, a gateway config change) and back to A with `podium rollback`, with no failed request,
`podium verify` passing and the digests and MLServer versions served being the expected ones
after each; (a) a change of the llama.cpp engine's args rolls replica by replica with no failed
request; (b) an arg the new llama-server cannot start with stops the run at the first replica,
the other keeps serving the previous release with no failed request, and the error names the
replica and `podium rollback`.
"""

from __future__ import annotations

import json
import re
import ssl
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import yaml

from podium.registry.sync import tiny_cache
from podium.render import REPO
from tests.fixtures_lab import UniqueStack, podium, remove_stack_state, require_lab_host, unique_stack

pytestmark = pytest.mark.lab

SOURCE = REPO / "tests" / "stacks" / "labroll"
ENGINE = "tiny-llama-cpp"
UNITS = {"node1": f"podium-llamacpp-{ENGINE}-0.service", "node2": f"podium-llamacpp-{ENGINE}-1.service"}
PREDICTIVE = {"node1": "podium-predictive-iris-predictive-0.service",
              "node2": "podium-predictive-iris-predictive-1.service"}
# Release B's MLServer: the one before the table's 1.7.1, with the same scikit-learn and skops.
MLSERVER_B = "1.7.0"
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
    """Two clients, each sending chat then streamed chat in turn until stopped (or the bounds),
    and, given `infer`, a third one sending that v2 inference."""

    client: openai.OpenAI
    infer: Callable[[], None] | None = None
    ok: int = 0
    failures: list[str] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)
    threads: list[threading.Thread] = field(default_factory=list)
    inferred: int = 0

    def start(self) -> Load:
        self.threads = [threading.Thread(target=self._run, daemon=True) for _ in range(2)]
        if self.infer is not None:
            self.threads.append(threading.Thread(target=self._run, args=(self.infer,), daemon=True))
        for t in self.threads:
            t.start()
        return self

    def finish(self) -> tuple[int, list[str]]:
        self.stop.set()
        for t in self.threads:
            t.join(120)
        return self.ok, self.failures

    def _run(self, infer: Callable[[], None] | None = None) -> None:
        deadline = time.monotonic() + MAX_LOAD_S
        n = 0
        while not self.stop.is_set() and time.monotonic() < deadline:
            if self.ok + len(self.failures) >= MAX_REQUESTS:
                break
            n += 1
            try:
                if infer is not None:
                    infer()
                    self.inferred += 1
                else:
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
        url, key = line(up.stdout, "gateway: "), line(up.stdout, "key: ")
        client = openai.OpenAI(base_url=url, api_key=key, max_retries=0, timeout=60,
                               http_client=httpx.Client(verify=trust))
        v2 = httpx.Client(base_url=url.removesuffix("/v1"), verify=trust, timeout=60,
                          headers={"Authorization": f"Bearer {key}"})
        yield {"copy": copy, "folder": copy.folder, "client": client, "v2": v2, "figures": {}}
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


def iris_infer(lab: dict[str, Any]) -> Callable[[], None]:
    """One v2 inference of the iris model through the gateway, checked against its known answer."""
    sidecar = json.loads((tiny_cache(lab["copy"].name) / "iris-1" / "iris.json").read_text())
    body = {"inputs": [{**sidecar["input"], "shape": [1, 4], "data": sidecar["example_input"][0]}]}

    def infer() -> None:
        answer = lab["v2"].post("/v2/models/iris/infer", json=body)
        assert answer.status_code == 200, f"HTTP {answer.status_code}: {answer.text[:300]}"
        assert answer.json()["outputs"][0]["data"] == sidecar["expected_prediction"], answer.text[:300]

    return infer


def on(lab: dict[str, Any], node: str, command: str) -> str:
    done = podium("lab", "ssh", node, "--stack", str(lab["folder"]), "--", command, timeout=60)
    assert done.returncode == 0, f"`{command}` on {node}: {done.stdout[-2000:]}{done.stderr[-2000:]}"
    return done.stdout


def served(lab: dict[str, Any]) -> dict[str, tuple[str, str, str]]:
    """Per node: the llama-server's command line, the MLServer venv its running process loaded
    (the shared libraries it mapped, by their real path) and that venv's `pip show` version."""
    out = {}
    for node in UNITS:
        llama = on(lab, node, f"tr '\\0' ' ' < /proc/$(systemctl show -p MainPID --value {UNITS[node]})/cmdline")
        pid = on(lab, node, f"systemctl show -p MainPID --value {PREDICTIVE[node]}").strip()
        assert pid not in ("", "0"), f"{PREDICTIVE[node]} is not running on {node}"
        venvs = set(on(lab, node, f"grep -o '/opt/podium/mlserver-[0-9.]*/' /proc/{pid}/maps || true").split())
        assert len(venvs) == 1, f"MLServer on {node} maps {venvs or 'no venv'}"
        venv = venvs.pop().rstrip("/")
        shown = on(lab, node, f"{venv}/bin/pip show mlserver")
        version = next(x.split(":", 1)[1].strip() for x in shown.splitlines() if x.startswith("Version:"))
        out[node] = (llama, venv, version)
    return out


def gateway_config(lab: dict[str, Any]) -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(on(lab, "ctrl", "cat /etc/podium/gateway/gateway.yaml"))
    return loaded


def release_b(lab: dict[str, Any], into: Path) -> str:
    """Release B's stack folder: tiny-llama version 2, MLServer MLSERVER_B, the gateway's write
    timeout raised (a gateway config change)."""
    declared = yaml.safe_load((lab["folder"] / "stack.yaml").read_text())
    declared["models"].append({**declared["models"][0], "version": "2"})
    engine = next(e for e in declared["engines"] if e["name"] == ENGINE)
    engine["model"] = "tiny-llama:2"
    declared["versions"] = {"engine-predictive": MLSERVER_B}
    declared["gateway"]["write_timeout_s"] = 90
    folder = into / lab["copy"].name
    folder.mkdir()
    (folder / "stack.yaml").write_text(yaml.safe_dump(declared, sort_keys=False))
    return str(folder)


def under_load(lab: dict[str, Any], *command: str) -> tuple[subprocess.CompletedProcess[str], float, Load]:
    """Run `podium COMMAND` while the chat, streamed chat and v2 inference clients send requests."""
    load = Load(lab["client"], infer=iris_infer(lab)).start()
    time.sleep(3)
    began = time.monotonic()
    done = podium(*command)
    took = time.monotonic() - began
    time.sleep(3)
    load.finish()
    assert load.ok + len(load.failures) < MAX_REQUESTS, f"the load ended before `podium {command[0]}` did"
    return done, took, load


def test_release_a_to_b_and_rollback_to_a_fail_no_request(lab: dict[str, Any], tmp_path: Path) -> None:
    """Runs first: it starts from release 1, as `podium lab up` laid it down."""
    folder = str(lab["folder"])
    assert [r["number"] for r in json.loads(podium("history", folder, "--json").stdout)] == [1]
    a = served(lab)
    digest_1 = json.loads(podium("history", folder, "--json").stdout)[0]["models"]["tiny-llama:1"]
    for node, (llama, venv, version) in a.items():
        assert digest_1 in llama and venv.endswith("-1.7.1") and version == "1.7.1", (node, a[node])
    assert gateway_config(lab)["connections"]["write_timeout_s"] == 60

    up, took_up, load = under_load(lab, "up", release_b(lab, tmp_path))
    lab["figures"]["release A to B"] = (took_up, load.ok, len(load.failures))
    print(f"\nrelease A to B: {took_up:.1f} s, {load.ok} requests ok ({load.inferred} v2 inferences),"
          f" {len(load.failures)} failed")
    print("\n".join(x for x in (up.stdout + up.stderr).splitlines() if " on node" in x or " on ctrl" in x))
    assert up.returncode == 0, up.stdout[-3000:] + up.stderr[-5000:]
    assert "release: 2" in up.stdout or "release 2 recorded" in up.stderr, up.stdout + up.stderr[-2000:]
    assert not load.failures, (f"{len(load.failures)} of {load.ok + len(load.failures)} requests failed:\n"
                               + "\n".join(load.failures[:10]))
    assert load.inferred >= 10 and load.ok - load.inferred >= 20, (load.ok, load.inferred)
    verify = podium("verify", folder)
    assert verify.returncode == 0, verify.stdout[-3000:] + verify.stderr[-3000:]
    digest_2 = json.loads(podium("history", folder, "--json").stdout)[1]["models"]["tiny-llama:2"]
    assert digest_2 != digest_1
    b = served(lab)
    for node, (llama, venv, version) in b.items():
        assert digest_2 in llama and venv.endswith(f"-{MLSERVER_B}") and version == MLSERVER_B, (node, b[node])
    assert gateway_config(lab)["connections"]["write_timeout_s"] == 90

    back, took_back, load = under_load(lab, "rollback", folder)
    lab["figures"]["rollback B to A"] = (took_back, load.ok, len(load.failures))
    print(f"rollback to A: {took_back:.1f} s, {load.ok} requests ok ({load.inferred} v2 inferences),"
          f" {len(load.failures)} failed")
    assert back.returncode == 0, back.stdout[-3000:] + back.stderr[-5000:]
    assert "release: 3" in back.stdout, back.stdout
    assert not load.failures, (f"{len(load.failures)} of {load.ok + len(load.failures)} requests failed:\n"
                               + "\n".join(load.failures[:10]))
    assert load.inferred >= 10 and load.ok - load.inferred >= 20, (load.ok, load.inferred)
    verify = podium("verify", folder)
    assert verify.returncode == 0, verify.stdout[-3000:] + verify.stderr[-3000:]
    assert served(lab) == a, "the rollback did not serve release A's model digest and MLServer again"
    assert gateway_config(lab)["connections"]["write_timeout_s"] == 60


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

    # The rollback the error names restores the release the hosts served before the run, under
    # load again, with no failed request.
    named = re.search(r"`podium rollback \S+ --to (\d+)`", output)
    assert named, output[-3000:]
    back, took_back, load = under_load(lab, "rollback", str(lab["folder"]), "--to", named.group(1))
    lab["figures"]["rollback after the failed roll"] = (took_back, load.ok, len(load.failures))
    print(f"rollback after the failed roll: {took_back:.1f} s, {load.ok} requests ok, {len(load.failures)} failed")
    assert back.returncode == 0, back.stdout[-3000:] + back.stderr[-5000:]
    assert not load.failures, f"{len(load.failures)} requests failed:\n" + "\n".join(load.failures[:10])
    context = re.search(r"--ctx-size \d+", before["node1"]["ExecStart"])
    assert context, before["node1"]["ExecStart"]
    for node in UNITS:
        restored = unit(lab, node)["ExecStart"]
        assert "--no-such-flag" not in restored and context.group(0) in restored, (node, restored)
