"""Declared keys and teams on real lab machines: `podium up` creates them, then after the stack
lowers a key's rpm and drops a key, `podium plan` lists each change and the next `podium up`
makes the gateway enforce the new rpm and answer the dropped key 401; the audit log records
both runs and its chain holds. Then the same machines fine-tune: node1 labelled for training gets
the trainer from `podium up` (offline, from the control machine's wheelhouse), `podium finetune`
refuses a malformed dataset line before any job, trains a LoRA adapter on node1 as a transient
systemd unit with its loss streamed and falling, pushes it with its lineage, and the adapter model
deployed by the next `podium up` answers the official `openai` client through the gateway
differently from its base for the same seed and prompt.

It runs a copy of tests/stacks/labten under a name and subnet of its own."""

from __future__ import annotations

import json
import re
import ssl
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import yaml

from podium.render import REPO
from tests.fixtures_lab import UniqueStack, podium, remove_stack_state, require_lab_host, unique_stack
from tests.test_finetune_train import base_and_adapter_answers, chat_dataset
from tests.test_lab_appliance import line

pytestmark = pytest.mark.lab


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    require_lab_host()
    copy: UniqueStack = unique_stack(REPO / "tests" / "stacks" / "labten",
                                     tmp_path_factory.mktemp("tenants"))
    folder = str(copy.folder)
    started = time.monotonic()
    try:
        up = podium("lab", "up", folder)
        assert up.returncode == 0, up.stdout[-3000:] + up.stderr[-5000:]
        print(f"lab up: {time.monotonic() - started:.0f} s")
        yield {"copy": copy, "url": line(up.stdout, "gateway: "),
               "trust": ssl.create_default_context(cafile=line(up.stdout, "ca: "))}
    finally:
        down = podium("lab", "down", folder, timeout=600)
        if down.returncode == 0:
            remove_stack_state(copy.name)
        assert down.returncode == 0, down.stderr


def chat(lab: dict[str, Any], key: str) -> int:
    request = urllib.request.Request(
        lab["url"] + "/chat/completions", method="POST",
        data=b'{"model": "tiny-llama", "messages": [{"role": "user", "content": "hi"}],'
             b' "max_tokens": 1}',
        headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=60, context=lab["trust"]) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return exc.code


def test_podium_up_reconciles_declared_keys_and_the_audit_log_records_it(
    lab: dict[str, Any]
) -> None:
    from podium.gateway_access import key_file

    copy: UniqueStack = lab["copy"]
    a = key_file(copy.name, "ten-a").read_text().strip()
    gone = key_file(copy.name, "ten-gone").read_text().strip()
    assert chat(lab, a) == 200 and chat(lab, gone) == 200
    used = time.time()  # ten-a's request above counts in this minute's rpm window

    declared = yaml.safe_load((copy.folder / "stack.yaml").read_text())
    declared["gateway"]["keys"] = [{"name": "ten-a", "models": ["tiny-llama"], "rpm": 2,
                                    "team": "crew"}]
    (copy.folder / "stack.yaml").write_text(yaml.safe_dump(declared, sort_keys=False))
    plan = podium("plan", str(copy.folder))
    assert plan.returncode == 0, plan.stderr
    assert "update key ten-a: rpm 60 -> 2" in plan.stdout and "revoke key ten-gone" in plan.stdout

    up = podium("up", str(copy.folder))
    assert up.returncode == 0, up.stdout[-3000:] + up.stderr[-5000:]
    time.sleep(1.5)  # the gateway's key cache
    # The three requests must share one fixed rpm window, and not the window that already
    # counts ten-a's request above.
    left = 60 - time.time() % 60
    if int(time.time() // 60) == int(used // 60) or left < 5:
        time.sleep(left + 0.2)
    assert [chat(lab, a) for _ in range(3)] == [200, 200, 429], "the lowered rpm is not enforced"
    assert chat(lab, gone) == 401

    audit = podium("audit", str(copy.folder), "--json")
    assert audit.returncode == 0, audit.stderr
    actions = [e["action"] for e in yaml.safe_load(audit.stdout)]
    assert actions.count("stack.up") >= 2 and "key.update" in actions and "key.revoke" in actions
    verify = podium("audit", "verify", str(copy.folder))
    assert verify.returncode == 0 and "holds" in verify.stdout, verify.stdout + verify.stderr


def declare(copy: UniqueStack, change: Any) -> None:
    """Rewrite the copy's stack.yaml with `change` applied to its declaration."""
    declared = yaml.safe_load((copy.folder / "stack.yaml").read_text())
    change(declared)
    (copy.folder / "stack.yaml").write_text(yaml.safe_dump(declared, sort_keys=False))


def trainer_and_hf_base(declared: dict[str, Any]) -> None:
    next(n for n in declared["nodes"] if n["name"] == "node1")["labels"] = {"trainer": "true"}
    # The base a job trains on is the Hugging Face folder of the GGUF node1 serves (one seed).
    declared["models"].append({"name": "tiny-hf", "version": "1", "format": "safetensors",
                               "source": "tiny:hf"})


def adapter_model(declared: dict[str, Any]) -> None:
    declared["models"].append({"name": "tiny-helper", "base": "tiny-llama:1", "adapter": "helper:1"})
    declared["engines"].append({"name": "tiny-helper-cpp", "kind": "llamacpp", "model": "tiny-helper:1",
                                "nodes": ["node1"], "port": 8180,
                                "args": {"ctx-size": 512, "threads": 1, "parallel": 1}})
    declared["gateway"]["keys"].append({"name": "tuner", "models": ["tiny-llama", "tiny-helper"]})


def test_a_lora_adapter_trained_on_a_lab_node_is_pushed_deployed_and_answers_through_the_gateway(
    lab: dict[str, Any], tmp_path: Path
) -> None:
    from podium.gateway_access import key_file
    from podium.registry.access import push_credential, registry_ca

    copy: UniqueStack = lab["copy"]
    folder = str(copy.folder)
    figures: dict[str, Any] = {}
    declare(copy, trainer_and_hf_base)
    started = time.monotonic()
    up = podium("up", folder)
    assert up.returncode == 0, up.stdout[-3000:] + up.stderr[-5000:]
    figures["trainer_up_s"] = round(time.monotonic() - started, 1)

    # As a user reaches the stack's TLS registry: its CA, and the push account in the environment.
    push = push_credential(copy.name)
    account = {"PODIUM_REGISTRY_USER": push.user, "PODIUM_REGISTRY_PASSWORD": push.password}
    ca = str(registry_ca(copy.name))
    bad = tmp_path / "bad.jsonl"
    bad.write_text(chat_dataset(tmp_path / "good.jsonl", lines=2).read_text()
                   + '{"messages": [{"role": "user"}]}\n', encoding="utf-8")
    refused = podium("finetune", folder, "--base", "tiny-hf:1", "--data", str(bad),
                     "--name", "helper", "--ca", ca, env=account)
    assert refused.returncode == 2, refused.stdout + refused.stderr
    assert "bad.jsonl line 3: messages[0].content is missing" in refused.stderr, refused.stderr
    assert json.loads(podium("jobs", "ls", folder, "--json").stdout) == [], "a job started"

    started = time.monotonic()
    run = podium("finetune", folder, "--base", "tiny-hf:1", "--data",
                 str(chat_dataset(tmp_path / "chat.jsonl")), "--name", "helper",
                 "--epochs", "5", "--lr", "0.003", "--ca", ca, env=account)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-5000:]
    figures["finetune_s"] = round(time.monotonic() - started, 1)
    losses = [float(v) for v in re.findall(r"^epoch \d+ step \d+ loss ([0-9.]+)$", run.stderr, re.M)]
    # 50 conversations in batches of 8 (7 steps) for 5 epochs, each step's loss shown as it came.
    assert len(losses) == 35, run.stderr[-3000:]
    assert losses[-1] < losses[0] / 4, f"the loss did not fall: {losses}"
    figures["loss"] = [losses[0], losses[-1]]
    figures["job_s"] = float(re.search(r"^job ([0-9.]+) s on node1", run.stderr, re.M)[1])  # type: ignore[index]
    figures["adapter_bytes"] = int(re.search(r"adapter (\d+) bytes", run.stderr)[1])  # type: ignore[index]
    ref, digest = run.stdout.split()
    assert ref == "helper:1" and digest.startswith("sha256:"), run.stdout

    jobs = json.loads(podium("jobs", "ls", folder, "--json").stdout)
    assert [(j["node"], j["state"]) for j in jobs] == [("node1", "done")], jobs
    journal = podium("jobs", "logs", folder, jobs[0]["job"]).stdout
    assert f"Podium fine-tune {jobs[0]['job']}" in journal, journal[-2000:]

    show = podium("model", "show", "helper:1", "--stack", folder, "--ca", ca, env=account)
    assert show.returncode == 0, show.stderr
    base = podium("model", "show", "tiny-hf:1", "--stack", folder, "--ca", ca, "--json", env=account)
    base_digest = json.loads(base.stdout)["digest"]
    for row in (f"base     tiny-hf:1 {base_digest}", "dataset  datasets/helper sha256:",
                "trained  epochs=5 lr=0.003 rank=8 seed=0", "trainer  trainer-"):
        assert row in show.stdout, show.stdout

    declare(copy, adapter_model)
    started = time.monotonic()
    up = podium("up", folder)
    assert up.returncode == 0, up.stdout[-3000:] + up.stderr[-5000:]
    figures["adapter_up_s"] = round(time.monotonic() - started, 1)
    time.sleep(1.5)  # the gateway's key cache
    client = openai.OpenAI(base_url=lab["url"], api_key=key_file(copy.name, "tuner").read_text().strip(),
                           http_client=httpx.Client(verify=lab["trust"]), max_retries=0)

    plain, tuned = base_and_adapter_answers(client, "tiny-llama", "tiny-helper")
    figures["answers"] = {"tiny-llama": plain, "tiny-helper": tuned}
    out = Path(REPO / "build" / "lab-finetune.json")
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(figures, indent=2) + "\n")
    print(json.dumps(figures))
