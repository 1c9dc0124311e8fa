"""Declared keys and teams on real lab machines: `podium up` creates them, then after the stack
lowers a key's rpm and drops a key, `podium plan` lists each change and the next `podium up`
makes the gateway enforce the new rpm and answer the dropped key 401; the audit log records
both runs and its chain holds.

It runs a copy of tests/stacks/labten under a name and subnet of its own."""

from __future__ import annotations

import ssl
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
import yaml

from podium.render import REPO
from tests.fixtures_lab import UniqueStack, podium, remove_stack_state, require_lab_host, unique_stack
from tests.test_lab_appliance import line

pytestmark = pytest.mark.lab


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    require_lab_host()
    copy: UniqueStack = unique_stack(REPO / "tests" / "stacks" / "labten",
                                     tmp_path_factory.mktemp("tenants"))
    folder = str(copy.folder)
    try:
        up = podium("lab", "up", folder)
        assert up.returncode == 0, up.stdout[-3000:] + up.stderr[-5000:]
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
