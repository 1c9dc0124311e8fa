"""Usage records: equal to the engine's own counters, reported by `podium usage`, rolled up."""

from __future__ import annotations

import csv
import io
import json
import time
from pathlib import Path

import openai
import pytest

from podium.services.gateway.metering import UsageRecord, record_op
from podium.services.gateway.store import Store
from podium.services.gateway.tables import usage_daily_table
from podium.services.gateway.usage import report_op, rollup_op
from tests.fixtures_engines import engine_dir, llama_server_bin, tiny_gguf
from tests.fixtures_gateway import (
    GatewayFactory,
    LlamaReplicas,
    engine_counters,
    gateways,
    llama_replicas,
    models_for,
    podium,
    usage_rows,
)

__all__ = ["engine_dir", "gateways", "llama_replicas", "llama_server_bin", "tiny_gguf"]

CHAT = [{"role": "user", "content": "Count to ten."}]


@pytest.mark.engines
def test_usage_records_equal_the_engines_own_counters(
        gateways: GatewayFactory, llama_replicas: LlamaReplicas) -> None:
    engine = llama_replicas.start()  # a replica of its own: no other test's tokens in its counters
    gw = gateways.start(models=models_for(engine.url, engine.model))
    client = openai.OpenAI(base_url=gw.url + "/v1", api_key=gw.new_key("counted"),
                           max_retries=0)
    before = engine_counters(engine.url)
    for i in range(3):
        client.chat.completions.create(model="tiny", messages=CHAT, max_tokens=5 + i)
        list(client.chat.completions.create(model="tiny", messages=CHAT, max_tokens=7 + i,
                                            stream=True))
        list(client.chat.completions.create(model="tiny", messages=CHAT, max_tokens=3,
                                            stream=True, stream_options={"include_usage": True}))
        client.completions.create(model="tiny", prompt=f"Number {i}", max_tokens=4)
        list(client.completions.create(model="tiny", prompt="Go", max_tokens=6, stream=True))
    after = engine_counters(engine.url)
    rows = usage_rows(gw.store, "counted")
    assert len(rows) == 15 and all(r["status"] == 200 for r in rows)
    # The engine counts cached prompt tokens apart; the API's prompt_tokens include them.
    prompt = (after["prompt_tokens_total"] - before["prompt_tokens_total"]
              + after["prompt_tokens_cached_total"] - before["prompt_tokens_cached_total"])
    generated = after["tokens_predicted_total"] - before["tokens_predicted_total"]
    assert sum(r["prompt_tokens"] for r in rows) == prompt
    assert sum(r["completion_tokens"] for r in rows) == generated


def _record(ts: float, key: str, model: str, prompt: int, completion: int, status: int = 200,
            cost: float = 0.0) -> UsageRecord:
    return UsageRecord(ts=ts, request_id=f"r{ts}{key}", key_id=1, key_name=key, model=model,
                       endpoint="/v1/chat/completions", status=status, prompt_tokens=prompt,
                       completion_tokens=completion, latency_ms=5.0, cost=cost)


def test_podium_usage_reports_per_key_and_model_with_cost(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'usage.db'}"
    store = Store(url)
    store.create_schema()
    now = time.time()
    for record in (_record(now, "alice", "tiny", 10, 5, cost=0.25),
                   _record(now, "alice", "tiny", 20, 5, cost=0.5),
                   _record(now, "alice", "big", 1, 1, status=502),
                   _record(now, "bob", "tiny", 3, 4, cost=0.125)):
        store.run_sync(record_op(record, None))
    run = podium("usage", "--store", url, "--json", "--by", "key")
    assert run.exit_code == 0, run.error
    by_key = {line["key"]: line for line in json.loads(run.stdout)}
    assert (by_key["alice"]["requests"], by_key["alice"]["errors"]) == (3, 1)
    assert (by_key["alice"]["prompt_tokens"], by_key["alice"]["completion_tokens"]) == (31, 11)
    assert by_key["alice"]["cost"] == pytest.approx(0.75)
    rows = list(csv.DictReader(io.StringIO(podium("usage", "--store", url, "--csv").stdout)))
    assert [(r["key"], r["model"], r["requests"]) for r in rows] == [
        ("alice", "big", "1"), ("alice", "tiny", "2"), ("bob", "tiny", "1")]
    tomorrow = time.strftime("%Y-%m-%d", time.gmtime(now + 86400))
    assert json.loads(podium("usage", "--store", url, "--json", "--since", tomorrow).stdout) == []
    bad = podium("usage", "--store", url, "--by", "colour")
    assert bad.exit_code == 2 and "--by" in bad.error


def test_usage_reports_per_key_and_day_on_postgresql(postgres_url: str) -> None:
    # Gateways that share limits share a PostgreSQL store: its reports must group there too.
    store = Store(postgres_url)
    store.create_schema()
    try:
        day = 86400 * (time.time() // 86400)
        for ts, key in ((day + 10, "alice"), (day + 20, "alice"), (day - 10, "alice"), (day + 30, "bob")):
            store.run_sync(record_op(_record(ts, key, "tiny", 3, 1), None))
        by_key = store.run_sync(report_op(None, None, ["key"]))
        assert [(line.key, line.requests, line.prompt_tokens) for line in by_key] == [("alice", 3, 9), ("bob", 1, 3)]
        by_day = store.run_sync(report_op(None, None, ["key", "day"]))
        assert [(line.key, line.requests) for line in by_day] == [("alice", 1), ("alice", 2), ("bob", 1)]
    finally:
        store.engine.dispose()


def test_old_records_are_rolled_up_per_day_and_still_reported(tmp_path: Path) -> None:
    store = Store(f"sqlite:///{tmp_path / 'rollup.db'}")
    store.create_schema()
    now = time.time()
    old = now - 40 * 86400
    for i in range(6):
        store.run_sync(record_op(_record(old + i, "carol", "tiny", 10, 2, cost=0.5), None))
    store.run_sync(record_op(_record(now, "carol", "tiny", 1, 1, cost=0.5), None))
    before = store.run_sync(report_op(None, None, ["key"]))
    assert store.run_sync(rollup_op(retention_days=30)) == 6
    assert store.run_sync(rollup_op(retention_days=30)) == 0
    daily = store.run_sync(lambda conn: conn.execute(usage_daily_table.select()).all())
    assert [(d.requests, d.prompt_tokens, d.completion_tokens) for d in daily] == [(6, 60, 12)]
    assert store.run_sync(report_op(None, None, ["key"])) == before
    assert len(usage_rows(store.url)) == 1
