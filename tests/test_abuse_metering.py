"""Streams a client abandons or an engine cuts off are billed as the engine counted them."""

from __future__ import annotations

import json
import time
from typing import Any

import httpx
import pytest

from tests.fixtures_gateway import GatewayFactory, GatewayProcess, gateways, usage_rows
from tests.scripted_engine import ScriptedEngine, scripted

__all__ = ["gateways", "scripted"]


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
            with_text = [e for e in events if e.get("choices")]
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


def test_without_a_tokenizer_the_estimate_is_never_below_the_count(
        gateways: GatewayFactory) -> None:
    engine = ScriptedEngine(words_per_event=3, tokenizer=False).start()
    try:
        gw = scripted_gateway(gateways, engine)
        key = gw.new_key("estimated")
        events = stream(gw, key, "slow estimate", leave_after=2)
        assert len(events) == 2
        record = one_record(gw, "estimated")
    finally:
        engine.stop()
    prompt, completion = engine.sent["slow estimate"]
    # One token per byte: the prompt's whole request body, every byte of text relayed.
    assert record["prompt_tokens"] >= prompt and record["completion_tokens"] >= completion
    assert record["completion_tokens"] == len(("tok " * 3).encode()) * completion // 3
