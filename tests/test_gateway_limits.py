"""RPM, TPM and quotas, enforced together by two gateway processes sharing PostgreSQL."""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.fixtures_engines import (
    EngineServer,
    engine_dir,
    llama_server,
    llama_server_bin,
    tiny_gguf,
)
from tests.fixtures_gateway import (
    GatewayFactory,
    GatewayProcess,
    PostgresServer,
    http,
    models_for,
    postgres_server,
)

__all__ = ["engine_dir", "llama_server", "llama_server_bin", "postgres_server", "tiny_gguf"]

pytestmark = pytest.mark.engines


@pytest.fixture(scope="module")
def pair(llama_server: EngineServer, postgres_server: PostgresServer,
         tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[GatewayProcess, ...]]:
    """Two gateways on one PostgreSQL database, in front of the same engine."""
    factory = GatewayFactory(tmp_path_factory.mktemp("gateway-limits"))
    store = postgres_server.new_database()
    models = models_for(llama_server.url, llama_server.model)
    try:
        yield (factory.start(models=models, store=store),
               factory.start(models=models, store=store))
    finally:
        factory.stop_all()


def chat(gw: GatewayProcess, key: str, max_tokens: int = 1) -> tuple[int, dict[str, str], dict]:
    status, headers, body = http("POST", gw.url + "/v1/chat/completions", key, {
        "model": "tiny", "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": max_tokens})
    return status, {k.lower(): v for k, v in headers.items()}, json.loads(body)


def fresh_minute(needed_s: float = 15.0) -> None:
    """Fixed one-minute windows: start a counting test where the window will not turn."""
    left = 60 - time.time() % 60
    if left < needed_s:
        time.sleep(left + 0.2)


def test_rpm_holds_across_two_gateways_under_concurrency(
        pair: tuple[GatewayProcess, GatewayProcess]) -> None:
    a, b = pair
    key = a.new_key("rpm-shared", rpm=10)
    fresh_minute()
    with ThreadPoolExecutor(16) as pool:
        results = list(pool.map(lambda i: chat((a, b)[i % 2], key)[0], range(24)))
    assert Counter(results) == {200: 10, 429: 14}
    status, headers, body = chat(b, key)
    assert status == 429 and body["error"]["code"] == "requests_per_minute"
    assert 1 <= int(headers["retry-after"]) <= 61


def test_tpm_counts_tokens_served_by_either_gateway(
        pair: tuple[GatewayProcess, GatewayProcess]) -> None:
    a, b = pair
    key = a.new_key("tpm-shared", tpm=40)
    fresh_minute()
    spent = 0
    for i in range(10):
        status, _, body = chat((a, b)[i % 2], key, max_tokens=4)
        if status == 429:
            break
        assert status == 200, body
        spent += body["usage"]["total_tokens"]
    assert status == 429 and body["error"]["code"] == "tokens_per_minute"
    # Admitted while under the limit; refused on the first request after reaching it.
    assert spent >= 40
    assert chat(a if i % 2 else b, key)[0] == 429


def test_quota_refuses_with_insufficient_quota_once_used(
        pair: tuple[GatewayProcess, GatewayProcess]) -> None:
    a, b = pair
    key = a.new_key("quota-shared", quota="30/day")
    for i in range(10):
        status, headers, body = chat((a, b)[i % 2], key, max_tokens=4)
        if status == 429:
            break
    assert status == 429, "the quota never ran out"
    assert body["error"]["type"] == "insufficient_quota"
    assert int(headers["retry-after"]) <= 86400 + 1
    assert chat(a, key)[0] == chat(b, key)[0] == 429


def test_defaults_apply_to_keys_without_their_own_limits(
        llama_server: EngineServer, tmp_path_factory: pytest.TempPathFactory) -> None:
    factory = GatewayFactory(tmp_path_factory.mktemp("gateway-defaults"))
    try:
        gw = factory.start(models=models_for(llama_server.url, llama_server.model),
                           limits={"rpm": 2})
        own = gw.new_key("own-limit", rpm=5)
        default = gw.new_key("default-limit")
        fresh_minute()
        assert [chat(gw, default)[0] for _ in range(3)] == [200, 200, 429]
        assert [chat(gw, own)[0] for _ in range(3)] == [200, 200, 200]
    finally:
        factory.stop_all()
