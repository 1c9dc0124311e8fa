"""Real engines on 127.0.0.1: llama-server with the tiny GGUF, MLServer with the skops runtime."""

from __future__ import annotations

import json
import operator
import platform
import re
import subprocess
from pathlib import Path
from typing import Any

import httpx
import joblib
import pytest
import skops.io
from sklearn.datasets import load_iris
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import FunctionTransformer

from podium.artifacts import X86_64_FEATURES, cpu_label
from podium.models.tiny_sklearn import sidecar_path
from tests.fixtures_engines import (
    EngineServer,
    add_mlserver_model,
    engine_dir,
    free_port,
    llama_server,
    llama_server_bin,
    mlserver,
    mlserver_model_settings,
    stop,
    tiny_gguf,
    tiny_sklearn,
)

__all__ = ["engine_dir", "llama_server", "llama_server_bin", "mlserver", "tiny_gguf",
           "tiny_sklearn"]

pytestmark = pytest.mark.engines

MAX_TOKENS = 8


def post(url: str, body: dict[str, Any]) -> dict[str, Any]:
    response = httpx.post(url, json=body, timeout=30)
    assert response.status_code == 200, response.text
    data: dict[str, Any] = response.json()
    return data


def sse_events(url: str, body: dict[str, Any]) -> list[dict[str, Any]]:
    """POST a streamed request and return its data events; [DONE] must close the stream."""
    events: list[dict[str, Any]] = []
    # A fresh client per stream: llama-server closes the socket after a streamed reply.
    with httpx.Client(timeout=30) as client, client.stream("POST", url, json=body) as response:
        assert response.status_code == 200, response.read()
        assert response.headers["content-type"].startswith("text/event-stream")
        lines = [line for line in response.iter_lines() if line.startswith("data: ")]
    assert lines and lines[-1] == "data: [DONE]", lines[-3:]
    events = [json.loads(line.removeprefix("data: ")) for line in lines[:-1]]
    return events


# --- llama-server -----------------------------------------------------------------------


def test_llama_server_health(llama_server: EngineServer) -> None:
    response = httpx.get(f"{llama_server.url}/health", timeout=5)
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


def test_models_lists_the_served_name(llama_server: EngineServer) -> None:
    data = httpx.get(f"{llama_server.url}/v1/models", timeout=5).json()
    assert [m["id"] for m in data["data"]] == [llama_server.model]


def test_completion_returns_tokens(llama_server: EngineServer) -> None:
    data = post(f"{llama_server.url}/v1/completions", {
        "model": llama_server.model, "prompt": "The weather is", "max_tokens": MAX_TOKENS,
        "temperature": 0,
    })
    assert data["choices"][0]["text"].strip()
    # The tiny model never picks end-of-text greedily, so it runs to max_tokens.
    assert data["usage"]["completion_tokens"] == MAX_TOKENS
    assert data["choices"][0]["finish_reason"] == "length"


def test_chat_completion_returns_tokens(llama_server: EngineServer) -> None:
    data = post(f"{llama_server.url}/v1/chat/completions", {
        "model": llama_server.model, "max_tokens": MAX_TOKENS, "temperature": 0,
        "messages": [{"role": "user", "content": "Hello, how are you?"}],
    })
    message = data["choices"][0]["message"]
    assert message["role"] == "assistant" and message["content"].strip()
    assert data["usage"]["completion_tokens"] == MAX_TOKENS
    # ChatML wraps the 6 prompt tokens in markers, so the template was applied.
    assert data["usage"]["prompt_tokens"] > 6


def test_streamed_chat_sends_deltas_then_usage(llama_server: EngineServer) -> None:
    events = sse_events(f"{llama_server.url}/v1/chat/completions", {
        "model": llama_server.model, "max_tokens": MAX_TOKENS, "temperature": 0,
        "stream": True, "stream_options": {"include_usage": True},
        "messages": [{"role": "user", "content": "Tell me a story."}],
    })
    text = "".join(
        (c["delta"].get("content") or "") for e in events for c in e["choices"]
    )
    assert text.strip()
    assert events[-1]["usage"]["completion_tokens"] == MAX_TOKENS
    assert events[-1]["choices"] == []
    # Same request, not streamed: the same greedy text.
    whole = post(f"{llama_server.url}/v1/chat/completions", {
        "model": llama_server.model, "max_tokens": MAX_TOKENS, "temperature": 0,
        "messages": [{"role": "user", "content": "Tell me a story."}],
    })
    assert whole["choices"][0]["message"]["content"] == text


def test_streamed_completion_sends_usage(llama_server: EngineServer) -> None:
    events = sse_events(f"{llama_server.url}/v1/completions", {
        "model": llama_server.model, "prompt": "Once upon a time", "max_tokens": MAX_TOKENS,
        "temperature": 0, "stream": True, "stream_options": {"include_usage": True},
    })
    assert "".join(c.get("text", "") for e in events for c in e["choices"]).strip()
    usage = [e["usage"] for e in events if e.get("usage")]
    assert usage and usage[-1]["completion_tokens"] == MAX_TOKENS


def test_metrics_count_generated_tokens(llama_server: EngineServer) -> None:
    post(f"{llama_server.url}/v1/completions", {
        "model": llama_server.model, "prompt": "Numbers like", "max_tokens": MAX_TOKENS,
    })
    response = httpx.get(f"{llama_server.url}/metrics", timeout=5)
    assert response.status_code == 200
    found = re.search(r"(?m)^llamacpp:tokens_predicted_total (\d+)", response.text)
    assert found and int(found.group(1)) >= MAX_TOKENS, response.text[:500]


def test_tokenizer_matches_the_hf_tokenizer(llama_server: EngineServer, tmp_path: Path) -> None:
    tokenizers = pytest.importorskip("tokenizers")
    from podium.models import make_tiny

    hf = make_tiny("hf", tmp_path / "hf")
    text = "Hello world! The weather is nice, 42 times.\nOK"
    ids = post(f"{llama_server.url}/tokenize", {"content": text})["tokens"]
    assert ids == tokenizers.Tokenizer.from_file(str(hf / "tokenizer.json")).encode(text).ids


def test_wheel_label_names_the_cpu_features_llama_server_uses(
    llama_server_bin: Path, tiny_gguf: Path
) -> None:
    if not cpu_label().startswith("cpu.avx2"):
        pytest.skip(f"the wheel label {cpu_label()!r} names no x86-64 CPU features to check on this"
                    f" {platform.machine()} machine; it is checked on x86-64 builds")
    proc = subprocess.Popen(
        [str(llama_server_bin), "--model", str(tiny_gguf), "--host", "127.0.0.1",
         "--port", str(free_port()), "-lv", "4"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        assert proc.stdout is not None
        line = next((ln for ln in proc.stdout if "system_info" in ln), "")
    finally:
        stop(proc)
    enabled = set(re.findall(r"(\w+) = 1", line))
    assert set(X86_64_FEATURES) <= enabled, line
    assert not {f for f in enabled if f.startswith("AVX512") or f == "AVX_VNNI"}, line


# --- MLServer ---------------------------------------------------------------------------


def test_mlserver_is_ready(mlserver: EngineServer) -> None:
    assert httpx.get(f"{mlserver.url}/v2/health/ready", timeout=5).status_code == 200
    meta = httpx.get(f"{mlserver.url}/v2/models/{mlserver.model}", timeout=5).json()
    assert meta["name"] == mlserver.model


def test_v2_infer_returns_the_sidecar_prediction(mlserver: EngineServer, tiny_sklearn: Path
                                                 ) -> None:
    sidecar = json.loads(sidecar_path(tiny_sklearn).read_text())
    example = sidecar["example_input"]
    data = post(f"{mlserver.url}/v2/models/{mlserver.model}/infer", {"inputs": [{
        "name": sidecar["input"]["name"], "datatype": sidecar["input"]["datatype"],
        "shape": [len(example), len(example[0])], "data": sum(example, []),
    }]})
    assert data["outputs"][0]["name"] == "predict"
    assert data["outputs"][0]["data"] == sidecar["expected_prediction"]


def _negating_pipeline() -> Any:
    # operator.neg is a plain function skops does not trust by default.
    features, labels = load_iris(return_X_y=True)
    return make_pipeline(FunctionTransformer(func=operator.neg),
                         LogisticRegression(max_iter=300)).fit(features, labels)


def _load(server: EngineServer, name: str) -> httpx.Response:
    return httpx.post(f"{server.url}/v2/repository/models/{name}/load", timeout=60)


def test_skops_with_an_untrusted_type_is_refused(mlserver: EngineServer, tmp_path: Path) -> None:
    assert mlserver.repository is not None
    model = tmp_path / "negate.skops"
    skops.io.dump(_negating_pipeline(), model)
    add_mlserver_model(mlserver.repository, mlserver_model_settings("negate-untrusted", model))
    refused = _load(mlserver, "negate-untrusted")
    assert refused.status_code == 400
    assert "_operator.neg" in refused.json()["error"]
    assert httpx.get(f"{mlserver.url}/v2/models/negate-untrusted/ready").status_code != 200
    # Listing the type is what lets the same file load.
    add_mlserver_model(mlserver.repository, mlserver_model_settings(
        "negate-trusted", model, trusted_types=["_operator.neg"]))
    assert _load(mlserver, "negate-trusted").status_code == 200


def test_joblib_loads_only_when_the_model_is_trusted(mlserver: EngineServer, tmp_path: Path
                                                     ) -> None:
    assert mlserver.repository is not None
    model = tmp_path / "negate.joblib"
    joblib.dump(_negating_pipeline(), model)
    add_mlserver_model(mlserver.repository, mlserver_model_settings("pickled", model))
    refused = _load(mlserver, "pickled")
    assert refused.status_code == 400 and "pickle" in refused.json()["error"]
    add_mlserver_model(mlserver.repository,
                       mlserver_model_settings("pickled-trusted", model, trusted=True))
    assert _load(mlserver, "pickled-trusted").status_code == 200
