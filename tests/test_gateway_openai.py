"""The gateway through the official openai SDK, in front of a real llama-server and MLServer."""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest

from podium.models.tiny_sklearn import sidecar_path
from tests.fixtures_engines import (
    EngineServer,
    engine_dir,
    llama_server,
    llama_server_bin,
    mlserver,
    tiny_gguf,
    tiny_sklearn,
)
from tests.fixtures_gateway import GatewayFactory, GatewayProcess, models_for, usage_rows

__all__ = ["engine_dir", "llama_server", "llama_server_bin", "mlserver", "tiny_gguf",
           "tiny_sklearn"]  # fixtures, imported so pytest finds them

pytestmark = pytest.mark.engines
CHAT = [{"role": "user", "content": "Say something."}]


@pytest.fixture(scope="module")
def gw(llama_server: EngineServer, mlserver: EngineServer,
       tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    factory = GatewayFactory(tmp_path_factory.mktemp("gateway-openai"))
    try:
        yield factory.start(models=models_for(llama_server.url, llama_server.model,
                                              mlserver.url, mlserver.model))
    finally:
        factory.stop_all()


def sdk(gw: GatewayProcess, key: str) -> openai.OpenAI:
    # No SDK retries: every answer the test sees is the gateway's first.
    return openai.OpenAI(base_url=gw.url + "/v1", api_key=key, max_retries=0, timeout=60)


def store_of(gw: GatewayProcess) -> str:
    return gw.store


def test_models_lists_only_the_models_a_key_may_use(gw: GatewayProcess) -> None:
    one = sdk(gw, gw.new_key("models-one", models=("tiny",)))
    every = sdk(gw, gw.new_key("models-all"))
    assert [m.id for m in one.models.list()] == ["tiny"]
    assert sorted(m.id for m in every.models.list()) == ["iris", "tiny", "tiny-b"]
    assert one.models.retrieve("tiny").id == "tiny"
    with pytest.raises(openai.NotFoundError):
        one.models.retrieve("tiny-b")


def test_chat_completion_is_answered_and_metered_as_the_engine_counted(
        gw: GatewayProcess) -> None:
    client = sdk(gw, gw.new_key("chat"))
    answer = client.chat.completions.create(model="tiny", messages=CHAT, max_tokens=8)
    assert answer.object == "chat.completion"
    assert answer.choices[0].message.role == "assistant"
    assert answer.usage is not None and answer.usage.prompt_tokens > 0
    [row] = usage_rows(store_of(gw), "chat")
    assert (row["status"], row["model"], row["endpoint"]) == (200, "tiny", "/v1/chat/completions")
    assert row["prompt_tokens"] == answer.usage.prompt_tokens
    assert row["completion_tokens"] == answer.usage.completion_tokens
    expected = (answer.usage.prompt_tokens * 0.5 + answer.usage.completion_tokens * 1.5) / 1000
    assert row["cost"] == pytest.approx(expected)


def test_stream_is_relayed_chunk_by_chunk_without_usage_unless_asked(gw: GatewayProcess) -> None:
    client = sdk(gw, gw.new_key("stream"))
    chunks = list(client.chat.completions.create(model="tiny", messages=CHAT, max_tokens=8,
                                                 stream=True))
    assert chunks and all(c.object == "chat.completion.chunk" for c in chunks)
    # The client did not ask for usage, so it sees no usage-only chunk (as with OpenAI).
    assert all(c.choices and c.usage is None for c in chunks)
    assert chunks[-1].choices[0].finish_reason in ("length", "stop")
    [row] = usage_rows(store_of(gw), "stream")
    content_chunks = [c for c in chunks if c.choices[0].delta.content]
    assert row["status"] == 200 and row["ttft_ms"] is not None and row["ttft_ms"] > 0
    assert row["completion_tokens"] >= len(content_chunks) > 0
    assert row["prompt_tokens"] > 0


def test_stream_with_include_usage_ends_with_the_engines_usage(gw: GatewayProcess) -> None:
    client = sdk(gw, gw.new_key("stream-usage"))
    chunks = list(client.chat.completions.create(
        model="tiny", messages=CHAT, max_tokens=6, stream=True,
        stream_options={"include_usage": True}))
    last = chunks[-1]
    assert last.choices == [] and last.usage is not None
    [row] = usage_rows(store_of(gw), "stream-usage")
    assert (row["prompt_tokens"], row["completion_tokens"]) == (
        last.usage.prompt_tokens, last.usage.completion_tokens)


def test_completions_plain_and_streamed(gw: GatewayProcess) -> None:
    client = sdk(gw, gw.new_key("completions"))
    plain = client.completions.create(model="tiny", prompt="Once upon a time", max_tokens=5)
    assert plain.object == "text_completion" and plain.usage is not None
    streamed = list(client.completions.create(model="tiny", prompt="Once", max_tokens=5,
                                              stream=True))
    assert streamed and all(c.usage is None for c in streamed)
    rows = usage_rows(store_of(gw), "completions")
    assert [r["endpoint"] for r in rows] == ["/v1/completions"] * 2
    assert rows[0]["completion_tokens"] == plain.usage.completion_tokens


def test_errors_are_openai_errors_with_the_right_types(gw: GatewayProcess) -> None:
    good = gw.new_key("errors", models=("tiny",))
    with pytest.raises(openai.AuthenticationError) as unknown:
        sdk(gw, "pdm-not-a-key").chat.completions.create(model="tiny", messages=CHAT)
    assert unknown.value.code == "invalid_api_key"
    # A model the key may not use is answered as one that does not exist (no enumeration).
    with pytest.raises(openai.NotFoundError) as denied:
        sdk(gw, good).chat.completions.create(model="tiny-b", messages=CHAT)
    assert denied.value.param == "model"
    with pytest.raises(openai.NotFoundError):
        sdk(gw, good).chat.completions.create(model="no-such-model", messages=CHAT)
    with pytest.raises(openai.BadRequestError) as bad:
        sdk(gw, good).chat.completions.create(model="tiny", messages=[])
    assert bad.value.param == "messages"
    body: Any = bad.value.body
    assert set(body) == {"message", "type", "param", "code"}
    with pytest.raises(openai.BadRequestError):
        sdk(gw, gw.new_key("errors-iris")).chat.completions.create(model="iris", messages=CHAT)


def test_rate_limit_is_a_429_with_retry_after(gw: GatewayProcess) -> None:
    client = sdk(gw, gw.new_key("one-per-minute", rpm=1))
    client.chat.completions.create(model="tiny", messages=CHAT, max_tokens=1)
    with pytest.raises(openai.RateLimitError) as limited:
        client.chat.completions.create(model="tiny", messages=CHAT, max_tokens=1)
    assert int(limited.value.response.headers["retry-after"]) >= 1
    assert limited.value.code == "requests_per_minute"


def _get(url: str, key: str | None = None) -> tuple[int, Any]:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers)) as resp:
            return resp.status, json.loads(resp.read() or b"null")
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"null")


def test_predictive_model_over_open_inference_v2(gw: GatewayProcess, tiny_sklearn: Path) -> None:
    key = gw.new_key("iris-user", models=("iris",))
    sidecar = json.loads(sidecar_path(tiny_sklearn).read_text())
    example = sidecar["example_input"]
    request = {"inputs": [{
        "name": sidecar["input"]["name"], "datatype": sidecar["input"]["datatype"],
        "shape": [len(example), len(example[0])], "data": sum(example, []),
    }]}
    post = urllib.request.Request(
        gw.url + "/v2/models/iris/infer", data=json.dumps(request).encode(), method="POST",
        headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"})
    with urllib.request.urlopen(post) as resp:
        answer = json.loads(resp.read())
    assert answer["outputs"][0]["data"] == sidecar["expected_prediction"]
    assert _get(gw.url + "/v2/models/iris/ready", key)[0] == 200
    assert _get(gw.url + "/v2/models/iris/ready")[0] == 401
    assert _get(gw.url + "/v2/models/tiny/ready", key)[0] == 404  # as if it did not exist
    assert _get(gw.url + "/v2/health/live") == (200, {"live": True})
    assert _get(gw.url + "/v2/health/ready")[0] == 200
    rows = usage_rows(store_of(gw), "iris-user")
    assert [(r["endpoint"], r["status"]) for r in rows] == [("/infer", 200), ("/ready", 200)]


def test_metrics_cover_requests_tokens_latencies_and_replicas(gw: GatewayProcess) -> None:
    client = sdk(gw, gw.new_key("metrics"))
    list(client.chat.completions.create(model="tiny", messages=CHAT, max_tokens=8, stream=True))
    with urllib.request.urlopen(gw.metrics_url) as resp:
        text = resp.read().decode()
    for needle in (
        'podium_gateway_requests_total{key="metrics",model="tiny",status="200"} 1.0',
        'podium_gateway_ttft_seconds_count{model="tiny"}',
        'podium_gateway_itl_seconds_count{model="tiny"}',
        'podium_gateway_tpot_seconds_count{model="tiny"}',
        'podium_gateway_tokens_total{key="metrics",kind="completion",model="tiny"}',
        'podium_gateway_request_duration_seconds_bucket',
        'podium_gateway_in_flight_requests 0.0',
    ):
        assert needle in text, f"/metrics lacks {needle}"
    healthy = [line for line in text.splitlines()
               if line.startswith("podium_gateway_upstream_healthy{")]
    assert healthy and all(line.endswith(" 1.0") for line in healthy), healthy
