"""Limits that hold under a burst: reservations, requests in flight, refusals that cost nothing."""

from __future__ import annotations

import contextlib
import json
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from sqlalchemy import select

from podium.cluster import ClusterInputs
from podium.cluster.gateway import gateway_config
from podium.files import build_gateway
from podium.plan.components import BY_NAME
from podium.services.gateway.config import GatewayConfig
from podium.services.gateway.keys import KeySpec, create_op, new_secret
from podium.services.gateway.limits import minute_window, period_window
from podium.services.gateway.reservation import worst_case
from podium.services.gateway.store import Store
from podium.services.gateway.tables import counters_table
from tests.fixtures_cluster import CLUSTER_STACK, write_stack
from tests.fixtures_gateway import (
    GatewayFactory,
    GatewayProcess,
    PostgresServer,
    free_port,
    gateways,
    http,
    podium,
    postgres_server,
    usage_rows,
)
from tests.scripted_engine import ScriptedEngine, scripted

__all__ = ["gateways", "postgres_server", "scripted"]


def models(engine: ScriptedEngine) -> dict[str, Any]:
    return {"scripted": {"kind": "llm", "replicas": [engine.url]},
            "hidden": {"kind": "llm", "replicas": [engine.url]}}


@pytest.fixture
def pair(scripted: ScriptedEngine, postgres_server: PostgresServer,
         gateways: GatewayFactory) -> tuple[GatewayProcess, GatewayProcess]:
    """Two gateway processes on one PostgreSQL database, in front of the scripted engine."""
    store = postgres_server.new_database()
    return (gateways.start(models=models(scripted), store=store),
            gateways.start(models=models(scripted), store=store))


def fresh_minute(needed_s: float = 20.0) -> None:
    """Fixed one-minute windows: start a counting test where the window will not turn."""
    left = 60 - time.time() % 60
    if left < needed_s:
        time.sleep(left + 0.2)


def chat_body(content: str, max_tokens: int | None = None, model: str = "scripted"
              ) -> dict[str, Any]:
    body: dict[str, Any] = {"model": model, "messages": [{"role": "user", "content": content}]}
    if max_tokens is not None:
        body["max_tokens"] = max_tokens
    return body


def chat(gw: GatewayProcess, key: str, body: dict[str, Any]
         ) -> tuple[int, dict[str, str], dict[str, Any]]:
    status, headers, raw = http("POST", gw.url + "/v1/chat/completions", key, body)
    return status, {k.lower(): v for k, v in headers.items()}, json.loads(raw)


@contextlib.contextmanager
def held_stream(gw: GatewayProcess, key: str, content: str) -> Iterator[None]:
    """A streamed request in flight (its first event read) until the block ends."""
    body = {**chat_body(f"slow {content}"), "stream": True}
    with httpx.stream("POST", gw.url + "/v1/chat/completions", json=body, timeout=60,
                      headers={"Authorization": f"Bearer {key}"}) as resp:
        assert resp.status_code == 200, resp.read()
        # Held until the block ends: an iterator dropped early would close the response.
        lines = resp.iter_lines()
        while not next(lines).startswith("data: "):
            pass
        yield
        lines.close()


def wait_records(gw: GatewayProcess, key_name: str, n: int, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while len(usage_rows(gw.store, key_name)) < n:
        assert time.monotonic() < deadline, f"fewer than {n} records for {key_name}"
        time.sleep(0.1)


def charge_of(store_url: str, key_id: int, kind: str, window: int) -> int:
    """What a key's counter window holds now (reservations and settlements together)."""
    store = Store(store_url)
    try:
        value = store.run_sync(lambda conn: conn.execute(
            select(counters_table.c.value).where(
                counters_table.c.key_id == key_id, counters_table.c.kind == kind,
                counters_table.c.window == window)).scalar())
    finally:
        store.engine.dispose()
    return int(value or 0)


@pytest.mark.parametrize(("limit", "kind", "code"), [
    ({"tpm": 100}, "tpm", "tokens_per_minute"),
    ({"quota": "100/day"}, "day", "insufficient_quota"),
])
def test_a_burst_overshoots_a_token_limit_by_at_most_one_reservation(
        pair: tuple[GatewayProcess, GatewayProcess], limit: dict[str, Any], kind: str,
        code: str) -> None:
    a, b = pair
    created = a.admin.create_key(KeySpec(name=f"burst-{kind}", **limit))
    key, key_id = created["key"], created["id"]
    bodies = [chat_body(f"burst {i}", max_tokens=30) for i in range(20)]
    # The most one request can reserve: every byte of its body, plus its max_tokens.
    reservation = max(len(json.dumps(body).encode()) + 30 for body in bodies)
    fresh_minute()
    now = time.time()
    window = minute_window(now) if kind == "tpm" else period_window(now, kind)[0]
    with ThreadPoolExecutor(20) as pool:
        results = list(pool.map(lambda i: chat((a, b)[i % 2], key, bodies[i]), range(20)))
    statuses = Counter(status for status, _, _ in results)
    assert set(statuses) == {200, 429} and statuses[200] >= 1, statuses
    refused = [body for status, _, body in results if status == 429]
    assert {body["error"]["code"] for body in refused} == {code}
    # Refused at admission, a request has no record.
    wait_records(a, f"burst-{kind}", statuses[200])
    served = sum(r["prompt_tokens"] + r["completion_tokens"]
                 for r in usage_rows(a.store, f"burst-{kind}"))
    assert charge_of(a.store, key_id, kind, window) == served, (
        "every reservation is settled to the tokens really used")
    assert served <= 100 + reservation, (served, reservation, statuses)


def test_requests_in_flight_are_bounded_per_key_across_gateways(
        pair: tuple[GatewayProcess, GatewayProcess]) -> None:
    a, b = pair
    key = a.new_key("two-at-once", max_in_flight=2)
    with held_stream(a, key, "one"), held_stream(b, key, "two"):
        status, headers, body = chat(b, key, chat_body("three", 4))
        assert status == 429 and body["error"]["code"] == "requests_in_flight", body
        assert int(headers["retry-after"]) >= 1
        assert chat(a, key, chat_body("four", 4))[0] == 429
    wait_records(a, "two-at-once", 2)  # the two streams were recorded, freeing their slots
    assert chat(a, key, chat_body("five", 4))[0] == 200


def test_refused_requests_do_not_use_the_keys_rpm(
        scripted: ScriptedEngine, gateways: GatewayFactory) -> None:
    # One gateway with room for one request (a second gets 503 while it runs), and one
    # beside it on the same store for a key allowed one request in flight (429).
    small = gateways.start(models=models(scripted), max_in_flight=1)
    roomy = gateways.start(models=models(scripted))
    full = small.new_key("rpm-503", rpm=2)
    busy = roomy.new_key("rpm-429", rpm=2, max_in_flight=1)
    fresh_minute()
    with held_stream(small, full, "full"):
        assert [chat(small, full, chat_body(f"x{i}", 4))[0] for i in range(3)] == [503] * 3
    wait_records(small, "rpm-503", 1)
    assert [chat(small, full, chat_body(f"y{i}", 4))[0] for i in range(2)] == [200, 429]
    with held_stream(roomy, busy, "busy"):
        refused = [chat(roomy, busy, chat_body(f"z{i}", 4)) for i in range(3)]
    assert [(s, b["error"]["code"]) for s, _, b in refused] == [(429, "requests_in_flight")] * 3
    wait_records(roomy, "rpm-429", 1)
    assert chat(roomy, busy, chat_body("last", 4))[0] == 200
    status, _, body = chat(roomy, busy, chat_body("over", 4))
    assert (status, body["error"]["code"]) == (429, "requests_per_minute")


def test_a_model_the_key_may_not_use_looks_like_one_that_does_not_exist(
        scripted: ScriptedEngine, gateways: GatewayFactory) -> None:
    gw = gateways.start(models=models(scripted))
    key = gw.new_key("one-model", models=("scripted",))
    answers = {}
    for model in ("hidden", "never-was"):
        status, headers, body = chat(gw, key, chat_body("hi", 4, model=model))
        card = http("GET", f"{gw.url}/v1/models/{model}", key)
        answers[model] = (status, sorted(body["error"]), body["error"]["code"],
                          body["error"]["message"].replace(model, "M"),
                          card[0], json.loads(card[2])["error"]["message"].replace(model, "M"))
    assert answers["hidden"] == answers["never-was"]
    assert answers["hidden"][0] == 404


def test_the_stacks_caps_and_key_bounds_reach_the_gateway(tmp_path: Path) -> None:
    text = CLUSTER_STACK.replace(
        '{name: tiny-llama, version: "1", format: gguf, source: "tiny:gguf"}',
        '{name: tiny-llama, version: "1", format: gguf, source: "tiny:gguf",'
        ' default_max_tokens: 77}')
    text = text.replace("gateway: {nodes: [ctl, cpu1],",
                        "gateway: {keys: [{name: ci, max_in_flight: 3}], nodes: [ctl, cpu1],")
    stack = write_stack(tmp_path / "capped", text)
    settings = BY_NAME["gateway"].settings(stack, "ctl")
    assert settings["keys"][0]["max_in_flight"] == 3  # created with it by podium up
    for document in (build_gateway("ctl", settings)["gateway.yaml"],
                     yaml.safe_dump(gateway_config(stack, ClusterInputs()))):
        config = GatewayConfig.model_validate(yaml.safe_load(document))
        assert config.models["tiny-llama"].default_max_tokens == 77
        assert config.models["iris"].default_max_tokens == 1024


def test_a_store_made_by_an_older_gateway_takes_keys_with_in_flight_bounds(
        tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'old.db'}"
    store = Store(url)
    # The keys table as gateways before per-key in-flight bounds created it.
    store.run_sync(lambda conn: conn.exec_driver_sql(
        "CREATE TABLE gateway_keys (id INTEGER PRIMARY KEY, name VARCHAR(200) UNIQUE NOT NULL,"
        " key_hash VARCHAR(64) UNIQUE NOT NULL, prefix VARCHAR(16) NOT NULL, models TEXT NOT NULL,"
        " rpm INTEGER, tpm INTEGER, quota BIGINT, quota_period VARCHAR(8), expires_at FLOAT,"
        " created_at FLOAT NOT NULL, revoked_at FLOAT)"))
    store.create_schema()
    key = store.run_sync(create_op(KeySpec(name="old-store", max_in_flight=2), new_secret()))
    assert key.max_in_flight == 2


def test_the_worst_case_counts_every_completion_asked_for() -> None:
    assert worst_case("/v1/chat/completions", {"max_tokens": 8}, 100, 1024) == (108, None)
    assert worst_case("/v1/chat/completions", {}, 100, 1024) == (1124, 1024)
    assert worst_case("/v1/completions", {"prompt": ["a", "b"], "n": 2, "max_tokens": 5},
                      50, 1024) == (70, None)
    assert worst_case("/v1/completions", {"prompt": [1, 2, 3], "best_of": 3,
                                          "max_completion_tokens": 4}, 40, 9) == (52, None)
    assert worst_case("/v1/embeddings", {"input": "hi"}, 30, 1024) == (30, None)


def test_the_cli_creates_keys_with_an_in_flight_bound(
        scripted: ScriptedEngine, gateways: GatewayFactory) -> None:
    gw = gateways.start(models=models(scripted))
    flags = ["--gateway", gw.url, "--admin-token-file", str(gw.config_path.parent / "admin-1.token")]
    made = podium("keys", "create", "--name", "cli-bound", "--max-in-flight", "1", *flags)
    assert made.exit_code == 0, made.error
    assert "1 in flight" in made.stdout
    secret = made.stdout.strip().splitlines()[-1]
    with held_stream(gw, secret, "cli"):
        status, _, body = chat(gw, secret, chat_body("two", 4))
    assert (status, body["error"]["code"]) == (429, "requests_in_flight")
    refused = podium("keys", "create", "--name", "cli-zero", "--max-in-flight", "0", *flags)
    assert refused.exit_code == 2 and "max_in_flight 0 must be 1 or more" in refused.error


def test_a_request_that_fails_gives_its_reservation_back(gateways: GatewayFactory) -> None:
    # A replica nobody listens on: refused before it leaves this machine.
    dead = f"http://127.0.0.1:{free_port()}"
    gw = gateways.start(models={"gone": {"kind": "llm", "replicas": [dead]}})
    created = gw.admin.create_key(KeySpec(name="failed", tpm=100_000))
    fresh_minute()
    window = minute_window(time.time())
    status, _, body = chat(gw, created["key"], chat_body("hi", 500, model="gone"))
    assert status in (502, 503), body
    wait_records(gw, "failed", 1)
    assert charge_of(gw.store, created["id"], "tpm", window) == 0


def test_a_503_after_admission_gives_the_request_back_to_the_keys_rpm(
        scripted: ScriptedEngine, gateways: GatewayFactory) -> None:
    dead = f"http://127.0.0.1:{free_port()}"  # refused before it leaves this machine
    gw = gateways.start(models={**models(scripted),
                                "gone": {"kind": "llm", "replicas": [dead]}})
    key = gw.new_key("rpm-refund", rpm=2)
    time.sleep(2)  # health probes take the dead replica out: "gone" has no replica left
    fresh_minute()
    assert [chat(gw, key, chat_body(f"g{i}", 4, model="gone"))[0] for i in range(3)] == [503] * 3
    wait_records(gw, "rpm-refund", 3)
    assert [chat(gw, key, chat_body(f"s{i}", 4))[0] for i in range(3)] == [200, 200, 429]
