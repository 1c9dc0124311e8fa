"""Streams a client abandons or an engine cuts off are billed as the engine counted them."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from tests.fixtures_engines import engine_dir, llama_server_bin, tiny_gguf
from tests.fixtures_gateway import (
    GatewayFactory,
    GatewayProcess,
    LlamaReplicas,
    engine_counters,
    gateways,
    llama_replicas,
    models_for,
    usage_rows,
)
from tests.scripted_engine import ScriptedEngine, scripted

__all__ = ["engine_dir", "gateways", "llama_replicas", "llama_server_bin", "scripted",
           "tiny_gguf"]


def scripted_gateway(gateways: GatewayFactory, engine: ScriptedEngine) -> GatewayProcess:
    return gateways.start(models={"scripted": {"kind": "llm", "replicas": [engine.url]}})


def one_record(gw: GatewayProcess, key_name: str, timeout: float = 15.0) -> dict[str, Any]:
    """The key's only usage record, once the gateway has written it (billing ends after the stream)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        rows = usage_rows(gw.store, key_name)
        if rows:
            time.sleep(0.3)  # a second record would have come with the first
            rows = usage_rows(gw.store, key_name)
            assert len(rows) == 1, rows
            return rows[0]
        time.sleep(0.1)
    raise AssertionError(f"no usage record for {key_name!r} within {timeout} s:\n{gw.log()}")


def counters_when_idle(read: Callable[[], dict[str, float]], busy: str, seconds: float) -> dict[str, float]:
    """An engine's counters once `busy` (its requests running) is 0, or after `seconds`: a
    client that left mid-stream stops the engine's work only when it notices."""
    deadline = time.monotonic() + seconds
    found = read()
    while found[busy] and time.monotonic() < deadline:
        time.sleep(0.1)
        found = read()
    return found


def stream(gw: GatewayProcess, key: str, content: str, model: str = "scripted",
           leave_after: int | None = None, **extra: Any) -> list[dict[str, Any]]:
    """Stream a chat; leave (close the connection) after `leave_after` events with text."""
    events: list[dict[str, Any]] = []
    body = {"model": model, "stream": True, "messages": [{"role": "user", "content": content}],
            **extra}
    with httpx.stream("POST", gw.url + "/v1/chat/completions", json=body, timeout=60,
                      headers={"Authorization": f"Bearer {key}"}) as resp:
        assert resp.status_code == 200, resp.read()
        for line in resp.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            event = json.loads(line[6:])
            events.append(event)
            with_text = [e for e in events if any(
                c.get("delta", {}).get("content") for c in e.get("choices") or ())]
            if leave_after is not None and len(with_text) >= leave_after:
                break  # leaving the block closes the connection mid-stream
    return events


def test_a_stream_the_client_abandons_is_billed_as_the_engine_counted(
        gateways: GatewayFactory, scripted: ScriptedEngine) -> None:
    gw = scripted_gateway(gateways, scripted)
    key = gw.new_key("leaver")
    events = stream(gw, key, "slow please", leave_after=3)
    assert len(events) == 3 and not any("usage" in e for e in events)
    record = one_record(gw, "leaver")
    prompt, completion = scripted.sent["slow please"]
    assert completion >= 9  # three events of three words reached the client
    assert (record["prompt_tokens"], record["completion_tokens"]) == (prompt, completion)
    assert record["status"] == 499


@pytest.mark.parametrize(("script", "status", "words"), [
    ("cut short", 502, 12),  # the engine breaks the connection after four events
    ("silent engine", 200, 30),  # the engine ends normally but never reports usage
])
def test_a_stream_without_the_engines_usage_is_billed_as_the_engine_counted(
        gateways: GatewayFactory, scripted: ScriptedEngine, script: str, status: int,
        words: int) -> None:
    gw = scripted_gateway(gateways, scripted)
    key = gw.new_key("unreported")
    events = stream(gw, key, script)
    if status == 502:
        assert events[-1]["error"]["code"] == "upstream_error"
    record = one_record(gw, "unreported")
    assert scripted.sent[script][1] == words
    assert (record["prompt_tokens"], record["completion_tokens"]) == scripted.sent[script]
    assert record["status"] == status


def abandoned_on(gateways: GatewayFactory, engine: ScriptedEngine, content: str
                 ) -> tuple[dict[str, Any], tuple[int, int]]:
    """Leave a stream after two events on a scripted engine of its own: (record, engine's count)."""
    engine.start()
    try:
        gw = scripted_gateway(gateways, engine)
        events = stream(gw, gw.new_key("leaver"), content, leave_after=2)
        assert len(events) == 2
        return one_record(gw, "leaver"), engine.sent[content]
    finally:
        engine.stop()


def test_a_vllm_style_engine_counts_an_abandoned_stream_with_its_tokenize(
        gateways: GatewayFactory) -> None:
    record, counted = abandoned_on(gateways, ScriptedEngine(vllm=True), "slow vllm")
    assert (record["prompt_tokens"], record["completion_tokens"]) == counted


def test_without_a_tokenizer_the_estimate_is_never_below_the_count(
        gateways: GatewayFactory) -> None:
    record, (prompt, completion) = abandoned_on(gateways, ScriptedEngine(tokenizer=False),
                                                "slow estimate")
    # One token per byte: the prompt's whole request body, every byte of text relayed.
    assert record["prompt_tokens"] >= prompt and record["completion_tokens"] >= completion
    assert record["completion_tokens"] == len(("tok " * 3).encode()) * completion // 3


@pytest.mark.engines
def test_a_stream_abandoned_on_llama_server_is_billed_by_its_own_counters(
        gateways: GatewayFactory, llama_replicas: LlamaReplicas) -> None:
    engine = llama_replicas.start()  # a replica of its own: no other test's tokens in its counters
    gw = gateways.start(models=models_for(engine.url, engine.model))
    key = gw.new_key("llama-leaver")
    before = engine_counters(engine.url)
    events = stream(gw, key, "Tell me a long story about a lighthouse.", model="tiny",
                    leave_after=3, max_tokens=1500)
    assert not any("usage" in e for e in events)
    record = one_record(gw, "llama-leaver")
    after = counters_when_idle(lambda: engine_counters(engine.url), "requests_processing", 10)
    # The engine counts cached prompt tokens apart; the API's prompt_tokens include them.
    prompt = (after["prompt_tokens_total"] - before["prompt_tokens_total"]
              + after["prompt_tokens_cached_total"] - before["prompt_tokens_cached_total"])
    generated = after["tokens_predicted_total"] - before["tokens_predicted_total"]
    assert record["prompt_tokens"] == prompt
    # Every token the gateway read from the engine is billed; the engine may have made a
    # few more between the gateway closing the connection and noticing it, which no relay
    # can see. It stopped long before max_tokens, so the engine's work ended with the client.
    assert 3 <= record["completion_tokens"] <= generated < 1500
    assert generated - record["completion_tokens"] <= 16, (record, generated)
