"""The audit log on real gateways: every admin action in order, no secret, and a changed,
deleted or cut-off entry found by `podium audit verify` with its position."""

from __future__ import annotations

import csv
import io
import json
import sqlite3
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from podium.services.gateway.keys import KeySpec
from tests.fixtures_engines import (
    EngineServer,
    engine_dir,
    llama_server,
    llama_server_bin,
    tiny_gguf,
)
from tests.fixtures_gateway import (
    GatewayFactory,
    GatewayProcess,
    http,
    models_for,
    podium,
    postgres_server,
)
from tests.test_gateway_keys import admin_flags

__all__ = ["engine_dir", "llama_server", "llama_server_bin", "postgres_server", "tiny_gguf"]

pytestmark = pytest.mark.engines


@pytest.fixture
def gw(llama_server: EngineServer, tmp_path: Path) -> Iterator[GatewayProcess]:
    """A gateway with a store of its own, so each test sees its own chain from entry 1."""
    factory = GatewayFactory(tmp_path)
    try:
        yield factory.start(models=models_for(llama_server.url, llama_server.model))
    finally:
        factory.stop_all()


def db(gw: GatewayProcess) -> sqlite3.Connection:
    return sqlite3.connect(gw.config_path.parent / "gateway.db")


def admin_actions(gw: GatewayProcess) -> list[str]:
    """One of each admin action, through the CLI; the secrets it was shown."""
    flags = admin_flags(gw)
    made = podium("keys", "create", "--name", "aud", "--models", "tiny", "--rpm", "5", *flags)
    rotated = podium("keys", "rotate", "aud", "--grace", "0", *flags)
    for args in (["disable", "aud"], ["enable", "aud"], ["revoke", "aud"]):
        assert podium("keys", *args, *flags).exit_code == 0
    gw.new_key("aud-2")
    gw.admin.update_key("aud-2", {"rpm": 9, "budget": "1.5/day"})
    gw.admin.report("stack.up", "lab", {"release": 3, "changes": 2})
    return [made.stdout.splitlines()[-1], rotated.stdout.splitlines()[-1]]


def test_every_admin_action_is_logged_in_order_with_no_secret(gw: GatewayProcess) -> None:
    started = time.time()
    secrets = admin_actions(gw)
    run = podium("audit", "--json", *admin_flags(gw))
    assert run.exit_code == 0, run.error
    entries = json.loads(run.stdout)
    assert [(e["seq"], e["action"], e["target"]) for e in entries] == [
        (1, "key.create", "aud"), (2, "key.rotate", "aud"), (3, "key.disable", "aud"),
        (4, "key.enable", "aud"), (5, "key.revoke", "aud"), (6, "key.create", "aud-2"),
        (7, "key.update", "aud-2"), (8, "stack.up", "lab"),
    ]
    assert entries[0]["detail"] == {"models": ["tiny"], "rpm": 5}
    assert entries[6]["detail"] == {"rpm": 9, "budget": "1.5/day"}
    assert all(e["actor"].startswith("admin-token (") for e in entries), entries[0]["actor"]
    assert all(started - 1 <= e["ts"] <= time.time() + 1 for e in entries)
    with db(gw) as conn:
        stored = repr(conn.execute("SELECT * FROM gateway_audit").fetchall())
    for secret in secrets:
        assert secret.startswith("pdm-") and secret not in stored and secret not in run.stdout
    table = podium("audit", *admin_flags(gw)).stdout
    assert "key.rotate" in table and "stack.up" in table
    rows = list(csv.DictReader(io.StringIO(podium("audit", "--csv", *admin_flags(gw)).stdout)))
    assert [r["action"] for r in rows] == [e["action"] for e in entries]
    assert json.loads(rows[6]["detail"]) == {"rpm": 9, "budget": "1.5/day"}
    assert rows[-1]["hash"] == entries[-1]["hash"]
    since = podium("audit", "--json", "--since", "2999-01-01", *admin_flags(gw))
    assert json.loads(since.stdout) == []


def test_verify_names_the_position_of_a_changed_or_deleted_entry(gw: GatewayProcess) -> None:
    admin_actions(gw)
    holds = podium("audit", "verify", *admin_flags(gw))
    assert holds.exit_code == 0 and "holds: 8 entries" in holds.stdout, holds

    with db(gw) as conn:  # someone with the database hides who revoked the key
        conn.execute("UPDATE gateway_audit SET actor = 'nobody' WHERE seq = 5")
    broken = podium("audit", "verify", "--json", *admin_flags(gw))
    assert broken.exit_code == 1
    assert json.loads(broken.stdout) == {
        "holds": False, "entries": 5, "broken_at": 5,
        "reason": "its content does not match its hash"}
    text = podium("audit", "verify", *admin_flags(gw)).stdout
    assert "broken at entry 5" in text

    with db(gw) as conn:  # put it back, then delete an entry instead
        conn.execute("UPDATE gateway_audit SET actor = (SELECT actor FROM gateway_audit"
                     " WHERE seq = 4) WHERE seq = 5")
    assert podium("audit", "verify", *admin_flags(gw)).exit_code == 0
    with db(gw) as conn:
        conn.execute("DELETE FROM gateway_audit WHERE seq = 3")
    gone = json.loads(podium("audit", "verify", "--json", *admin_flags(gw)).stdout)
    assert (gone["broken_at"], gone["reason"]) == (3, "entry 3 is missing")


def test_entries_cut_off_the_end_are_found_from_the_head_kept_here(
    gw: GatewayProcess, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from podium.cli.audit import _check_head

    monkeypatch.setenv("PODIUM_STATE_DIR", str(tmp_path / "state"))
    admin_actions(gw)
    entries, check = gw.admin.audit(), gw.admin.audit_verify()
    assert _check_head("lab", entries, check)["holds"]
    with db(gw) as conn:
        conn.execute("DELETE FROM gateway_audit WHERE seq >= 7")
    entries, check = gw.admin.audit(), gw.admin.audit_verify()
    assert check["holds"], "the chain alone cannot see a cut-off end"
    found = _check_head("lab", entries, check)
    assert (found["holds"], found["broken_at"]) == (False, 8)


def test_gateways_sharing_postgresql_keep_one_chain(postgres_pair: list[GatewayProcess]) -> None:
    """Concurrent admin actions on two gateways never chain two entries to one predecessor."""
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda i: postgres_pair[i % 2].admin.create_key(KeySpec(name=f"pg-{i}")),
                      range(24)))
    check = postgres_pair[0].admin.audit_verify()
    assert check == {"holds": True, "entries": 24, "broken_at": None, "reason": ""}


def test_only_the_control_machines_own_actions_can_be_reported(gw: GatewayProcess) -> None:
    status, _, body = http("POST", gw.url + "/admin/v1/audit", gw.admin_token,
                           {"action": "key.revoke", "target": "someone"})
    assert status == 400 and "cannot be reported" in json.loads(body)["error"]["message"]
    assert http("POST", gw.url + "/admin/v1/audit", None, {"action": "stack.up"})[0] == 401
    assert http("GET", gw.url + "/admin/v1/audit/verify")[0] == 401
    bad = podium("audit", "stacks/lab", "extra", *admin_flags(gw))
    assert bad.exit_code == 2 and "the only verb is verify" in bad.error


STACK = """name: auditst
nodes:
  - {name: gw1, address: 127.0.0.1}
models:
  - {name: tiny, version: "1", format: gguf, source: "tiny:gguf"}
engines:
  - {name: tiny-cpp, kind: llamacpp, model: "tiny:1", nodes: [gw1]}
gateway: {nodes: [gw1], port: PORT, tls: false}
network: {admin_sources: [127.0.0.1/32]}
"""


def test_podium_up_rollback_and_model_changes_are_reported_by_the_control_machine(
    gw: GatewayProcess, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from rich.console import Console

    from podium.cli.model import _audit as model_audit
    from podium.gateway_access import ADMIN_TOKEN, report_action
    from podium.secrets import StackSecrets
    from podium.stack import load_stack
    from podium.up import UpResult, _audit

    monkeypatch.setenv("PODIUM_STATE_DIR", str(tmp_path / "state"))
    folder = tmp_path / "auditst"
    folder.mkdir()
    (folder / "stack.yaml").write_text(STACK.replace("PORT", str(gw.port)))
    token = StackSecrets("auditst").folder / "secrets" / ADMIN_TOKEN
    token.parent.mkdir(parents=True)
    token.write_text(gw.admin_token)
    stack = load_stack(str(folder))
    console = Console(file=open(tmp_path / "console", "w"))  # noqa: SIM115 - test output
    _audit(stack, "up", UpResult([], changes=2, release=4), [], ["gateway"], console)
    _audit(stack, "rollback to 3", UpResult([], changes=5, release=5), [], [], console)
    model_audit(str(folder), "model.tag", "tiny:stable", {"digest": "sha256:" + "a" * 64})
    entries = gw.admin.audit()
    assert [(e["action"], e["target"]) for e in entries] == [
        ("stack.up", "auditst"), ("stack.rollback", "auditst"), ("model.tag", "tiny:stable")]
    assert entries[0]["detail"]["only"] == ["gateway"] and entries[1]["detail"]["release"] == 5
    assert entries[0]["detail"]["done_at"] <= entries[0]["ts"]
    gw.stop()
    problem = report_action(stack, "stack.rollback", "auditst", {"release": 6})
    assert problem is not None and "is not in the audit log yet" in problem
    gw.start()
    assert report_action(stack, "model.rm", "tiny@sha256:" + "b" * 64, {}) is None
    later = [(e["action"], e["detail"].get("release")) for e in gw.admin.audit()[3:]]
    assert later == [("stack.rollback", 6), ("model.rm", None)], "the waiting entry was lost"
    assert gw.admin.audit_verify()["holds"]
