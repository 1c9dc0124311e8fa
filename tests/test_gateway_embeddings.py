"""Embeddings through the gateway with the official openai client, on a real llama-server."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import openai
import pytest

from podium.models import make_tiny
from podium.models.tiny_gguf import served_name
from podium.models.tiny_llama import SIZES
from tests.fixtures_engines import (
    START_TIMEOUT_S,
    EngineServer,
    engine_dir,
    llama_server_bin,
    serve_on_free_port,
    stop,
)
from tests.fixtures_gateway import GatewayFactory, GatewayProcess, usage_rows

__all__ = ["engine_dir", "llama_server_bin"]  # fixtures, imported so pytest finds them

pytestmark = pytest.mark.engines


@pytest.fixture(scope="module")
def embedding_server(llama_server_bin: Path, engine_dir: Path) -> Iterator[EngineServer]:
    """llama-server on the tiny embedding GGUF, started with --embeddings as the role does when
    the stack's engine has `args: {embeddings: true}`."""
    model_file = make_tiny("gguf-embedding", engine_dir / "tiny-embedding.gguf")
    model = served_name("tiny", embedding=True)
    server = serve_on_free_port(
        lambda port: [str(llama_server_bin), "--model", str(model_file), "--alias", model,
                      "--host", "127.0.0.1", "--port", str(port), "--embeddings",
                      "--threads", "1", "--metrics", "--no-webui"],
        model, engine_dir / "llama-server-embedding.log", START_TIMEOUT_S, busy="bind")
    try:
        yield server
    finally:
        stop(server.process)


@pytest.fixture(scope="module")
def gw(embedding_server: EngineServer, tmp_path_factory: pytest.TempPathFactory
       ) -> Iterator[GatewayProcess]:
    factory = GatewayFactory(tmp_path_factory.mktemp("gateway-embeddings"))
    try:
        yield factory.start(models={"embed": {
            "kind": "llm", "served_name": embedding_server.model,
            "replicas": [embedding_server.url],
            "price": {"prompt_per_1k": 2.0, "completion_per_1k": 9.0}}})
    finally:
        factory.stop_all()


def sdk(gw: GatewayProcess, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.url + "/v1", api_key=key, max_retries=0, timeout=60)


def test_embeddings_are_vectors_of_the_models_width_metered_by_prompt_tokens(
        gw: GatewayProcess) -> None:
    client = sdk(gw, gw.new_key("embedder"))
    answer = client.embeddings.create(model="embed", input=["hello world", "goodbye"])
    assert [d.index for d in answer.data] == [0, 1]
    assert all(len(d.embedding) == SIZES["tiny"].n_embd for d in answer.data)
    assert answer.data[0].embedding != answer.data[1].embedding
    assert answer.usage.prompt_tokens > 0
    [row] = usage_rows(gw.store, "embedder")
    assert (row["status"], row["model"], row["endpoint"]) == (200, "embed", "/v1/embeddings")
    assert (row["prompt_tokens"], row["completion_tokens"]) == (answer.usage.prompt_tokens, 0)
    assert row["cost"] == pytest.approx(answer.usage.prompt_tokens * 2.0 / 1000)


def test_embeddings_count_against_the_keys_token_limit(gw: GatewayProcess) -> None:
    client = sdk(gw, gw.new_key("embed-tpm", tpm=8))
    # A key under its limit is admitted; the prompt tokens it used then fill its minute.
    first = client.embeddings.create(model="embed", input="hello world, " * 8)
    assert first.usage.prompt_tokens > 8
    with pytest.raises(openai.RateLimitError) as limited:
        client.embeddings.create(model="embed", input="hello")
    assert limited.value.code == "tokens_per_minute"

