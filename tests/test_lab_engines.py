"""The engine roles on real lab machines: llama.cpp, MLServer and vLLM's CPU build deployed from
the registry, verified, the official client served by vLLM through the gateway and billed as vLLM
counted, then one engine's args changed: only that engine's replicas restart."""

from __future__ import annotations

import json
import re
import ssl
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
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
    "node2": ["podium-predictive-iris-predictive-0.service", "podium-vllm-tiny-hf-vllm-0.service"],
}
VLLM_METRICS = "http://127.0.0.1:8000/metrics"



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


def printed(output: str, prefix: str) -> str:
    """The value of the last line `podium lab up` printed starting with `prefix`."""
    found = [x.removeprefix(prefix).strip() for x in output.splitlines() if x.startswith(prefix)]
    assert found, f"no line starting {prefix!r} in:\n{output[-3000:]}"
    return found[-1]


def vllm_counters() -> dict[str, float]:
    """vLLM's own token counters on node2, summed over their labels, read on the node."""
    text = _ok(podium("lab", "ssh", "node2", "--stack", str(STACK), "--",
                      f"curl -fsS --max-time 10 {VLLM_METRICS}", timeout=60), "vLLM /metrics")
    found: dict[str, float] = {}
    for name, value in re.findall(r"(?m)^vllm:(\w+_total)(?:\{[^}]*\})? (\S+)$", text):
        found[name] = found.get(name, 0.0) + float(value)
    return found


@pytest.fixture(scope="module")
def lab() -> Iterator[dict[str, Any]]:
    """The labeng machines up, provisioned and verified; removed afterwards, also on failure."""
    require_lab_host()
    timings: dict[str, float] = {}
    try:
        start = time.monotonic()
        output = _ok(podium("lab", "up", str(STACK), timeout=2400), "podium lab up")
        timings["lab up (machines, base, registry, engines, gateway, verify)"] = (
            time.monotonic() - start)
        yield {"timings": timings, "url": printed(output, "gateway: "),
               "key": printed(output, "key: "), "ca": printed(output, "ca: ")}
    finally:
        podium("lab", "down", str(STACK), timeout=600)
        print("\n".join(f"{k}: {v:.0f} s" for k, v in timings.items()))


def test_engines_verify_after_lab_up(lab: dict[str, Any]) -> None:
    outcomes = json.loads(_ok(podium("verify", str(STACK), "--json", timeout=600), "podium verify"))
    engines = {(o["component"], o["host"]): o for o in outcomes if o["component"].startswith("engine-")}
    assert set(engines) == {("engine-llamacpp", "node1"), ("engine-predictive", "node2"),
                            ("engine-vllm", "node2")}
    failed = {k: o["failures"] for k, o in engines.items() if not o["passed"]}
    assert not failed, failed


def test_the_openai_client_gets_chat_from_vllm_through_the_gateway(lab: dict[str, Any]) -> None:
    trust = ssl.create_default_context(cafile=lab["ca"])
    client = openai.OpenAI(base_url=lab["url"], api_key=lab["key"], max_retries=0,
                           http_client=httpx.Client(verify=trust, timeout=120))
    chat = [{"role": "user", "content": "Hello from the lab."}]
    before = vllm_counters()
    whole = client.chat.completions.create(model="tiny-hf", messages=chat, max_tokens=6)
    assert whole.choices[0].message.content and whole.usage is not None
    chunks = list(client.chat.completions.create(model="tiny-hf", messages=chat, max_tokens=7,
                                                 stream=True,
                                                 stream_options={"include_usage": True}))
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    usage = chunks[-1].usage
    assert streamed and usage is not None and usage.completion_tokens == 7
    after = vllm_counters()
    assert whole.usage.completion_tokens + usage.completion_tokens == (
        after["generation_tokens_total"] - before["generation_tokens_total"]) == 13
    assert whole.usage.prompt_tokens + usage.prompt_tokens == (
        after["prompt_tokens_total"] - before["prompt_tokens_total"])


def test_changing_one_engines_args_restarts_only_its_replicas(lab: dict[str, Any], tmp_path: Path) -> None:
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
    lab["timings"]["podium up, one engine reconfigured"] = time.monotonic() - start

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
    lab["timings"]["podium up, nothing to do"] = time.monotonic() - start
    assert "changes: 0" in again
