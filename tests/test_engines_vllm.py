"""vLLM's CPU build on 127.0.0.1, installed as nodes install it, serving `make-tiny --kind hf`."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import httpx
import pytest
import testinfra
from roles.engine_vllm import verify

from tests.fixtures_engines import (
    EngineServer,
    engine_dir,
    resident_mib,
    tiny_hf,
    vllm_cpu_python,
    vllm_server,
)
from tests.test_engines_local import post, sse_events

__all__ = ["engine_dir", "tiny_hf", "vllm_cpu_python", "vllm_server"]

pytestmark = pytest.mark.engines

MAX_TOKENS = 8
CHAT = [{"role": "user", "content": "Hello, how are you?"}]
# The three processes (API server, engine core, worker with its 1 GiB KV cache) took about
# 2.7 GiB here; a lab node for vLLM is sized from this bound.
RESIDENT_BOUND_MIB = 4096


def counters(url: str) -> dict[str, float]:
    """vLLM's own token and request counters, summed over their labels."""
    text = httpx.get(f"{url}/metrics", timeout=10).text
    found: dict[str, float] = {}
    for name, value in re.findall(r"(?m)^vllm:(\w+)(?:\{[^}]*\})? (\S+)$", text):
        found[name] = found.get(name, 0.0) + float(value)
    return found


def test_the_venv_has_no_cuda_builds(vllm_cpu_python: Path) -> None:
    site = next(vllm_cpu_python.parent.parent.glob("lib/python3*/site-packages"))
    names = {p.name.split("-")[0].lower() for p in site.glob("*.dist-info")}
    assert {"vllm_cpu", "torch", "transformers"} <= names
    assert not names & {"torchvision", "torchaudio", "torchcodec", "triton"}, names


def test_start_up_time_and_memory(vllm_server: EngineServer) -> None:
    resident = resident_mib(vllm_server.process)
    print(f"\nvLLM CPU: ready in {vllm_server.ready_s:.0f} s, {resident:.0f} MiB resident")
    assert resident < RESIDENT_BOUND_MIB, f"{resident:.0f} MiB resident"


def test_models_lists_the_served_name(vllm_server: EngineServer) -> None:
    data = httpx.get(f"{vllm_server.url}/v1/models", timeout=5).json()
    assert [m["id"] for m in data["data"]] == [vllm_server.model]


def test_chat_applies_the_template_and_counts_as_tokenize_does(vllm_server: EngineServer) -> None:
    data = post(f"{vllm_server.url}/v1/chat/completions", {
        "model": vllm_server.model, "max_tokens": MAX_TOKENS, "temperature": 0, "messages": CHAT,
    })
    message = data["choices"][0]["message"]
    assert message["role"] == "assistant" and message["content"]
    assert data["usage"]["completion_tokens"] == MAX_TOKENS
    # The gateway bills an abandoned chat with this count (podium.services.gateway.counting).
    counted = post(f"{vllm_server.url}/tokenize", {"model": vllm_server.model, "messages": CHAT})
    assert data["usage"]["prompt_tokens"] == counted["count"]
    plain = post(f"{vllm_server.url}/tokenize", {"model": vllm_server.model,
                                                 "prompt": CHAT[0]["content"]})
    assert counted["count"] > plain["count"], "the chat template added no tokens"


def test_streamed_chat_matches_the_whole_answer(vllm_server: EngineServer) -> None:
    body: dict[str, Any] = {"model": vllm_server.model, "max_tokens": MAX_TOKENS,
                            "temperature": 0, "messages": CHAT}
    events = sse_events(f"{vllm_server.url}/v1/chat/completions",
                        {**body, "stream": True, "stream_options": {"include_usage": True}})
    text = "".join((c["delta"].get("content") or "") for e in events for c in e["choices"])
    assert events[-1]["usage"]["completion_tokens"] == MAX_TOKENS
    whole = post(f"{vllm_server.url}/v1/chat/completions", body)
    assert text and whole["choices"][0]["message"]["content"] == text


def test_completion_runs_to_max_tokens(vllm_server: EngineServer) -> None:
    data = post(f"{vllm_server.url}/v1/completions", {
        "model": vllm_server.model, "prompt": "The weather is", "max_tokens": MAX_TOKENS,
        "temperature": 0,
    })
    assert data["choices"][0]["text"]
    assert data["usage"]["completion_tokens"] == MAX_TOKENS


def test_usage_equals_the_engines_own_counters(vllm_server: EngineServer) -> None:
    before = counters(vllm_server.url)
    answers = [
        post(f"{vllm_server.url}/v1/completions", {
            "model": vllm_server.model, "prompt": f"Number {i}", "max_tokens": 3 + i})
        for i in range(3)
    ] + [post(f"{vllm_server.url}/v1/chat/completions", {
        "model": vllm_server.model, "max_tokens": 5, "messages": CHAT})]
    after = counters(vllm_server.url)
    prompt = sum(a["usage"]["prompt_tokens"] for a in answers)
    completion = sum(a["usage"]["completion_tokens"] for a in answers)
    assert after["prompt_tokens_total"] - before["prompt_tokens_total"] == prompt
    assert after["generation_tokens_total"] - before["generation_tokens_total"] == completion
    assert after["request_success_total"] - before["request_success_total"] == len(answers)
    # TTFT, TPOT and ITL as vLLM measures them, which the dashboards show beside the gateway's.
    for histogram in ("time_to_first_token_seconds", "request_time_per_output_token_seconds",
                      "inter_token_latency_seconds"):
        moved = after[f"{histogram}_count"] - before.get(f"{histogram}_count", 0)
        assert moved > 0, f"vllm:{histogram} did not move"


def test_the_roles_checks_pass_on_the_real_server(vllm_server: EngineServer) -> None:
    port = int(vllm_server.url.rsplit(":", 1)[1])
    replica = {"engine": "t", "replica": 0, "model": vllm_server.model, "port": port,
               "device": "cpu", "gpus": 0}
    host, settings = testinfra.get_host("local://"), {"replicas": [replica]}
    verify.test_020_health_and_served_name(host, settings)
    verify.test_030_completion_returns_tokens(host, settings)
    verify.test_040_metrics_count_a_completions_tokens(host, settings)
    # A replica that served another name fails the check, naming what it serves.
    with pytest.raises(AssertionError, match="serves"):
        verify.test_020_health_and_served_name(host, {"replicas": [{**replica, "model": "x"}]})
