"""Key lifecycle on a real gateway: declared keys reconciled, expiry, disable/enable, rotation."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fixtures_engines import (
    EngineServer,
    engine_dir,
    llama_server,
    llama_server_bin,
    tiny_gguf,
)
from tests.fixtures_gateway import GatewayFactory, GatewayProcess, http, models_for, podium, usage_rows
from tests.test_gateway_keys import admin_flags
from tests.test_gateway_limits import fresh_minute

__all__ = ["engine_dir", "llama_server", "llama_server_bin", "tiny_gguf"]

pytestmark = pytest.mark.engines
CHAT = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1}


@pytest.fixture(scope="module")
def gw(llama_server: EngineServer, tmp_path_factory: pytest.TempPathFactory
       ) -> Iterator[GatewayProcess]:
    factory = GatewayFactory(tmp_path_factory.mktemp("gateway-lifecycle"))
    try:
        yield factory.start(models=models_for(llama_server.url, llama_server.model))
    finally:
        factory.stop_all()


def chat(gw: GatewayProcess, key: str) -> tuple[int, dict[str, str]]:
    status, _, body = http("POST", gw.url + "/v1/chat/completions", key, CHAT)
    return status, json.loads(body).get("error") or {}


def until_refused(gw: GatewayProcess, key: str, within_s: float = 2.5) -> dict[str, str]:
    """Requests with `key` until one gets 401 (the key cache holds a key up to a second)."""
    deadline = time.monotonic() + within_s
    while True:
        status, error = chat(gw, key)
        if status == 401:
            return error
        assert status == 200, (status, error)
        assert time.monotonic() < deadline, f"the key still works after {within_s} s"
        time.sleep(0.1)


@pytest.fixture
def stack_secrets(gw: GatewayProcess, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A stack whose admin token is this gateway's, its secrets under tmp_path."""
    from podium.gateway_access import ADMIN_TOKEN
    from podium.secrets import StackSecrets

    monkeypatch.setenv("PODIUM_STATE_DIR", str(tmp_path))
    token_file = StackSecrets("tenants").folder / "secrets" / ADMIN_TOKEN
    token_file.parent.mkdir(parents=True)
    token_file.write_text(gw.admin_token)
    return "tenants"


def test_declared_keys_reconcile_limits_models_and_removal(gw: GatewayProcess,
                                                           stack_secrets: str) -> None:
    """What `podium up` runs on the gateway: a lowered rpm holds at once, a removed key gets
    401 with its usage kept, a key made by hand is left alone."""
    from podium.gateway_access import key_file, reconcile_declared_keys

    by_hand = gw.new_key("made-by-hand")
    declared = [{"name": "rc-a", "models": ["tiny"], "rpm": 60},
                {"name": "rc-gone", "models": "*"}]
    made = reconcile_declared_keys(stack_secrets, gw.url, declared)
    assert [c.describe() for c in made] == ["create key rc-a", "create key rc-gone"]
    assert reconcile_declared_keys(stack_secrets, gw.url, declared) == []
    gone = key_file(stack_secrets, "rc-gone").read_text().strip()
    assert chat(gw, gone)[0] == 200

    fresh_minute()
    declared = [{"name": "rc-a", "models": ["tiny", "tiny-b"], "rpm": 2, "quota": "5000/day"}]
    changed = reconcile_declared_keys(stack_secrets, gw.url, declared)
    assert [c.describe() for c in changed] == [
        "update key rc-a: models tiny -> tiny,tiny-b, rpm 60 -> 2, quota none -> 5000/day",
        "revoke key rc-gone",
    ]
    a = key_file(stack_secrets, "rc-a").read_text().strip()
    time.sleep(1.2)  # the gateway's key cache
    statuses = [chat(gw, a)[0] for _ in range(3)]
    assert statuses == [200, 200, 429], "the lowered rpm of 2 is not what the gateway enforces"
    assert http("POST", gw.url + "/v1/chat/completions", a, {**CHAT, "model": "tiny-b"})[0] == 429
    assert "revoked" in chat(gw, gone)[1]["message"]
    assert usage_rows(gw.store, "rc-gone"), "a revoked key's usage must be kept"
    assert not key_file(stack_secrets, "rc-gone").exists()
    assert chat(gw, by_hand)[0] == 200, "a key the stack never declared was touched"
    assert reconcile_declared_keys(stack_secrets, gw.url, declared) == []

    # `podium keys rotate STACK NAME` keeps a declared key's new secret in place of the old.
    from podium.gateway_access import keep_rotated

    for name in ("rc-a", "made-by-hand"):
        keep_rotated(stack_secrets, name, gw.admin.rotate_key(name, 0)["key"])
    assert key_file(stack_secrets, "rc-a").read_text().strip() != a
    assert not key_file(stack_secrets, "made-by-hand").exists(), "a hand-made key became declared"


def test_plan_shows_each_key_change_against_the_last_release(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import typer
    from typer.testing import CliRunner

    from podium.cli import core
    from podium.gateway_access import planned_key_changes
    from podium.render import REPO

    monkeypatch.setenv("PODIUM_STATE_DIR", str(tmp_path / "state"))
    app = typer.Typer()
    core.register(app)
    shown = CliRunner().invoke(app, ["plan", str(REPO / "stacks" / "single-gpu")]).stdout
    assert "create team research\n  create key platform\n  create key research-ci" in shown, shown

    before = {"gateway": {"keys": [{"name": "ci", "rpm": 60}, {"name": "old"},
                                   {"name": "same", "budget": "5.00/month"},
                                   {"name": "big", "budget": "1234567.5/month"}]}}
    (tmp_path / "stack.yaml").write_text(json.dumps(before))
    now = [{"name": "ci", "rpm": 30, "expires": "2099-01-01"}, {"name": "new"},
           {"name": "same", "budget": "5/month"}, {"name": "big", "budget": "1234567.50/month"}]
    lines = [c.describe() for c in planned_key_changes(tmp_path / "stack.yaml", now)]
    assert lines == ["update key ci: rpm 60 -> 30, expires_at none -> 2099-01-01 00:00 UTC",
                     "create key new", "revoke key old"]
    first = [c.describe() for c in planned_key_changes(None, now)]
    assert first == ["create key ci", "create key new", "create key same", "create key big"]


def test_expires_disable_enable_and_show(gw: GatewayProcess) -> None:
    run = podium("keys", "create", "--name", "life", "--models", "tiny", "--expires", "30d",
                 *admin_flags(gw))
    assert run.exit_code == 0, run.error
    secret = run.stdout.strip().splitlines()[-1]
    assert chat(gw, secret)[0] == 200
    shown = json.loads(podium("keys", "show", "life", "--json", *admin_flags(gw)).stdout)
    assert shown["state"] == "active" and 29 * 86400 < shown["expires_at"] - time.time() <= 30 * 86400
    assert secret not in json.dumps(shown)
    text = podium("keys", "show", "life", *admin_flags(gw)).stdout
    assert "state: active" in text and "models: tiny" in text

    assert podium("keys", "disable", "life", *admin_flags(gw)).exit_code == 0
    assert "is disabled" in until_refused(gw, secret)["message"]
    assert podium("keys", "enable", "life", *admin_flags(gw)).exit_code == 0
    time.sleep(1.2)
    assert chat(gw, secret)[0] == 200

    run = podium("keys", "update", "life", "--rpm", "7", "--models", "tiny,tiny-b", "--json",
                 *admin_flags(gw))
    assert run.exit_code == 0, run.error
    assert (json.loads(run.stdout)["rpm"], json.loads(run.stdout)["models"]) == (7, ["tiny", "tiny-b"])
    assert json.loads(run.stdout)["expires_at"] == shown["expires_at"], "unnamed settings changed"
    assert podium("keys", "update", "life", "--expires", "2001-01-01", *admin_flags(gw)).exit_code == 0
    assert "is expired" in until_refused(gw, secret)["message"]


def test_rotation_keeps_name_limits_and_usage_and_ends_the_old_secret(gw: GatewayProcess) -> None:
    old = gw.new_key("rotating", models=("tiny",), rpm=1000)
    assert chat(gw, old)[0] == 200
    run = podium("keys", "rotate", "rotating", "--grace", "3s", *admin_flags(gw))
    assert run.exit_code == 0, run.error
    new = run.stdout.strip().splitlines()[-1]
    assert new.startswith("pdm-") and new != old
    assert chat(gw, new)[0] == 200
    assert chat(gw, old)[0] == 200, "the old secret must work during its grace period"
    error = until_refused(gw, old, within_s=5.0)
    assert "is rotated" in error["message"]
    assert chat(gw, new)[0] == 200
    shown = json.loads(podium("keys", "show", "rotating", "--json", *admin_flags(gw)).stdout)
    assert (shown["models"], shown["rpm"], shown["state"]) == (["tiny"], 1000, "active")
    rows = usage_rows(gw.store, "rotating")
    assert len({r["key_id"] for r in rows}) == 1 and len(rows) >= 4
    assert shown["this_month"]["requests"] == len(rows), "usage before the rotation was lost"

    now = podium("keys", "rotate", "rotating", "--grace", "0", "--json", *admin_flags(gw))
    assert until_refused(gw, new)["code"] == "invalid_api_key"
    assert chat(gw, json.loads(now.stdout)["key"])[0] == 200


@pytest.mark.parametrize("args, fragment", [
    (["rotate", "x", "--grace", "5 weeks"], "--grace '5 weeks' is not a grace period"),
    (["rotate", "x", "--grace", "40d"], "at most 30d"),
    (["create", "--name", "y", "--expires", "soon"], "--expires 'soon' is not a date"),
    (["create", "--name", "y", "--budget", "lots"], "budget 'lots' is not understood"),
    (["show", "no-such-key"], "no key named 'no-such-key'"),
    (["update", "life-x"], "say what to change"),
    (["update", "no-such-key", "--quota", "9/week"], "N/day or N/month"),
    (["disable", "no-such-key"], "no key named 'no-such-key'"),
])
def test_lifecycle_refuses_bad_input_with_one_sentence(gw: GatewayProcess, args: list[str],
                                                       fragment: str) -> None:
    run = podium("keys", *args, *admin_flags(gw))
    assert run.exit_code == 2, run
    assert fragment in run.error and "Traceback" not in run.error
