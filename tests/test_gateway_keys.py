"""API keys: who gets in (401/403 matrix), revocation within a second, the CLI, hashing."""

from __future__ import annotations

import hashlib
import json
import sqlite3
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
from tests.fixtures_gateway import GatewayFactory, GatewayProcess, http, models_for, podium

__all__ = ["engine_dir", "llama_server", "llama_server_bin", "tiny_gguf"]

pytestmark = pytest.mark.engines
CHAT = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1}


@pytest.fixture(scope="module")
def gw(llama_server: EngineServer, tmp_path_factory: pytest.TempPathFactory
       ) -> Iterator[GatewayProcess]:
    factory = GatewayFactory(tmp_path_factory.mktemp("gateway-keys"))
    try:
        yield factory.start(models=models_for(llama_server.url, llama_server.model))
    finally:
        factory.stop_all()


def store(gw: GatewayProcess) -> str:
    return gw.store


def admin_flags(gw: GatewayProcess) -> list[str]:
    token_file = gw.config_path.parent / "admin-1.token"
    return ["--gateway", gw.url, "--admin-token-file", str(token_file)]


def chat(gw: GatewayProcess, key: str | None, model: str = "tiny") -> tuple[int, dict[str, str]]:
    status, _, body = http("POST", gw.url + "/v1/chat/completions", key, {**CHAT, "model": model})
    return status, json.loads(body).get("error") or {}


def test_who_gets_in(gw: GatewayProcess) -> None:
    good = gw.new_key("matrix-good", models=("tiny",))
    revoked = gw.new_key("matrix-revoked", models=("tiny",))
    expired = podium("keys", "create", "--name", "matrix-expired", "--models", "tiny",
                     "--expires", "2001-01-01", *admin_flags(gw)).stdout.splitlines()[-1]
    podium("keys", "revoke", "matrix-revoked", *admin_flags(gw))
    cases = {
        "no key": (None, "tiny", 401),
        "unknown key": ("pdm-" + "x" * 43, "tiny", 401),
        "revoked key": (revoked, "tiny", 401),
        "expired key": (expired, "tiny", 401),
        "model not allowed": (good, "tiny-b", 404),
        "allowed": (good, "tiny", 200),
    }
    for case, (key, model, expected) in cases.items():
        status, error = chat(gw, key, model)
        assert status == expected, f"{case}: got {status} {error}"
        if status == 401:
            assert error["code"] == "invalid_api_key", case
        if status == 404:  # the same answer as for a model that does not exist
            assert (error["code"], error["param"]) == ("model_not_found", "model"), case


def test_revocation_takes_effect_within_a_second_or_so(gw: GatewayProcess) -> None:
    key = gw.new_key("soon-revoked")
    assert chat(gw, key)[0] == 200  # now cached by the gateway
    assert podium("keys", "revoke", "soon-revoked", *admin_flags(gw)).exit_code == 0
    revoked_at = time.monotonic()
    while chat(gw, key)[0] == 200:
        assert time.monotonic() - revoked_at < 2.0, "a revoked key still works after 2 s"
        time.sleep(0.05)


def test_cli_creates_lists_and_revokes_through_the_admin_api(gw: GatewayProcess) -> None:
    run = podium("keys", "create", "--name", "cli-made", "--models", "tiny,tiny-b", "--rpm", "60",
                 "--tpm", "1000", "--quota", "5000/day", "--expires", "30d", *admin_flags(gw))
    assert run.exit_code == 0, run.error
    secret = run.stdout.strip().splitlines()[-1]
    assert secret.startswith("pdm-") and len(secret) > 40
    assert chat(gw, secret)[0] == 200
    listed = {k["name"]: k for k in json.loads(podium("keys", "ls", "--json",
                                                      *admin_flags(gw)).stdout)}
    made = listed["cli-made"]
    assert (made["models"], made["rpm"], made["tpm"], made["quota"], made["quota_period"],
            made["state"]) == (["tiny", "tiny-b"], 60, 1000, 5000, "day", "active")
    assert secret not in json.dumps(listed) and "key_hash" not in made
    again = podium("keys", "create", "--name", "cli-made", *admin_flags(gw))
    assert again.exit_code == 2 and "already exists" in again.error
    assert podium("keys", "revoke", "cli-made", "--json", *admin_flags(gw)).exit_code == 0
    listed = {k["name"]: k for k in json.loads(podium("keys", "ls", "--json",
                                                      *admin_flags(gw)).stdout)}
    assert listed["cli-made"]["state"] == "revoked"


def test_cli_on_the_store_directly_makes_keys_the_gateway_accepts(gw: GatewayProcess) -> None:
    run = podium("keys", "create", "--name", "from-store", "--models", "tiny",
                 "--store", store(gw))
    assert run.exit_code == 0, run.error
    assert chat(gw, run.stdout.strip().splitlines()[-1])[0] == 200


@pytest.mark.parametrize("args, fragment", [
    (["--name", "bad name!"], "key name"),
    (["--name", "q", "--quota", "10/week"], "N/day or N/month"),
    (["--name", "e", "--expires", "next tuesday"], "--expires"),
    (["--name", "m", "--models", "no-such-model"], "not served"),
    (["--name", "n"], None),  # neither --gateway nor --store
])
def test_cli_refuses_bad_input_with_one_sentence(gw: GatewayProcess, args: list[str],
                                                 fragment: str | None) -> None:
    flags = admin_flags(gw) if fragment else []
    run = podium("keys", "create", *args, *flags)
    assert run.exit_code == 2, run
    assert (fragment or "--store") in run.error
    assert "Traceback" not in run.error


def test_admin_api_wants_the_admin_token(gw: GatewayProcess) -> None:
    key = gw.new_key("not-an-admin")
    assert http("GET", gw.url + "/admin/v1/keys")[0] == 401
    assert http("GET", gw.url + "/admin/v1/keys", key)[0] == 401
    assert http("GET", gw.url + "/admin/v1/keys", gw.admin_token)[0] == 200
    wrong = gw.config_path.parent / "wrong.token"
    wrong.write_text("pdm-admin-wrong\n")
    run = podium("keys", "ls", "--gateway", gw.url, "--admin-token-file", str(wrong))
    assert run.exit_code == 1 and "admin token" in run.error


def test_keys_are_stored_only_as_hashes(gw: GatewayProcess) -> None:
    secret = gw.new_key("hashed")
    db = sqlite3.connect(gw.config_path.parent / "gateway.db")
    try:
        rows = db.execute("SELECT * FROM gateway_keys").fetchall()
        stored = db.execute("SELECT key_hash FROM gateway_keys WHERE name = 'hashed'").fetchone()
    finally:
        db.close()
    assert secret not in repr(rows)
    assert stored[0] == hashlib.sha256(secret.encode()).hexdigest()


def test_a_stacks_declared_keys_are_created_once_with_their_limits(
    gw: GatewayProcess, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What the gateway role does after deploying: the stack's `keys:` exist, secrets kept 0600."""
    from podium.gateway_access import ADMIN_TOKEN, ensure_declared_keys, key_file
    from podium.secrets import StackSecrets

    monkeypatch.setenv("PODIUM_STATE_DIR", str(tmp_path))
    # The stack's admin token is the one this gateway was started with.
    token_file = StackSecrets("declared").folder / "secrets" / ADMIN_TOKEN
    token_file.parent.mkdir(parents=True)
    token_file.write_text(gw.admin_token)
    declared = [{"name": "team-a", "models": ["tiny"], "rpm": 60, "tpm": None, "quota": "1000/day",
                 "expires": None},
                {"name": "team-b", "models": "*", "rpm": None, "tpm": 5000, "quota": None,
                 "expires": "2099-01-01"}]
    assert ensure_declared_keys("declared", gw.url, declared) == ["team-a", "team-b"]
    assert ensure_declared_keys("declared", gw.url, declared) == []  # second run: nothing new
    keys = {k["name"]: k for k in gw.admin.list_keys()}
    assert keys["team-a"]["models"] == ["tiny"] and keys["team-a"]["rpm"] == 60
    assert keys["team-b"]["tpm"] == 5000 and keys["team-b"]["expires_at"] is not None
    secret = key_file("declared", "team-a")
    assert secret.stat().st_mode & 0o777 == 0o600
    assert chat(gw, secret.read_text().strip())[0] == 200
