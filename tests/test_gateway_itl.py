"""The gateway's inter-token latency and TPOT agree with what the client measures on the stream.

The client's figures are the usual client-side ones: the time from its first to its last
text event over the gaps between them (mean ITL), and over the completion tokens less one
(TPOT). The gateway's are its Prometheus histograms (podium_gateway_itl_seconds,
podium_gateway_tpot_seconds): their mean from _sum and _count, and their median bucket.
"""

from __future__ import annotations

import http.server
import json
import re
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fixtures_engines import engine_dir, llama_server_bin, tiny_gguf
from tests.fixtures_gateway import (
    GatewayFactory,
    GatewayProcess,
    LlamaReplicas,
    free_port,
    gateways,
    llama_replicas,
)

__all__ = ["engine_dir", "gateways", "llama_replicas", "llama_server_bin", "tiny_gguf"]


def stream(gw: GatewayProcess, key: str, max_tokens: int) -> tuple[list[float], int]:
    """Arrival times of the text events of one streamed chat, and the completion tokens."""
    body = {"model": "tiny", "messages": [{"role": "user", "content": "Count."}],
            "max_tokens": max_tokens, "stream": True, "ignore_eos": True,
            "stream_options": {"include_usage": True}}
    request = urllib.request.Request(
        gw.url + "/v1/chat/completions", data=json.dumps(body).encode(), method="POST",
        headers={"Content-Type": "application/json", "Authorization": f"Bearer {key}"})
    # Each line is stamped as it is read and parsed only afterwards, so the client's own
    # work does not hold back the reading it times.
    arrived: list[tuple[float, bytes]] = []
    with urllib.request.urlopen(request, timeout=60) as resp:
        for line in resp:
            arrived.append((time.perf_counter(), line))
    times: list[float] = []
    completion = 0
    for at, line in arrived:
        if not line.startswith(b"data: {"):
            continue
        chunk = json.loads(line[6:])
        if chunk.get("usage"):
            completion = chunk["usage"]["completion_tokens"]
        if any((c.get("delta") or {}).get("content") for c in chunk.get("choices") or []):
            times.append(at)
    return times, completion


def histogram(gw: GatewayProcess, name: str) -> tuple[float, float, list[tuple[float, float]]]:
    """(sum, count, [(upper bound, cumulative count)]) of one of the gateway's histograms."""
    with urllib.request.urlopen(gw.metrics_url, timeout=10) as resp:
        text = resp.read().decode()
    series = f"podium_gateway_{name}_seconds"

    def value(suffix: str) -> float:
        found = re.search(rf'^{series}_{suffix}{{model="tiny"}} (\S+)$', text, re.MULTILINE)
        assert found, f"{series}_{suffix} is missing from /metrics"
        return float(found.group(1))

    buckets = [(float(le), float(n)) for le, n in re.findall(
        rf'^{series}_bucket{{le="([^"]+)",model="tiny"}} (\S+)$', text, re.MULTILINE)]
    return value("sum"), value("count"), buckets


def median_bucket(buckets: list[tuple[float, float]], count: float) -> tuple[float, float]:
    """The (lower, upper] bounds of the bucket that holds the median observation."""
    lower = 0.0
    for upper, cumulative in buckets:
        if cumulative >= count / 2:
            return lower, upper
        lower = upper
    raise AssertionError("no bucket holds the median")


def within(measured: float, expected: float, what: str) -> None:
    assert abs(measured - expected) <= 0.1 * expected, (
        f"{what}: the gateway says {measured * 1000:.2f} ms, the client {expected * 1000:.2f} ms")


@pytest.mark.engines
def test_itl_and_tpot_agree_with_the_client_on_a_real_llama_server(
    gateways: GatewayFactory, llama_replicas: LlamaReplicas
) -> None:
    engine = llama_replicas.start()
    gw = gateways.start(models={"tiny": {"served_name": engine.model,
                                         "replicas": [engine.url]}})
    key = gw.new_key("itl")
    times, completion = stream(gw, key, 400)
    assert len(times) >= 32 and completion >= len(times)
    client_itl = (times[-1] - times[0]) / (len(times) - 1)
    client_tpot = (times[-1] - times[0]) / (completion - 1)
    itl_sum, itl_count, _ = histogram(gw, "itl")
    tpot_sum, tpot_count, _ = histogram(gw, "tpot")
    assert itl_count == len(times) - 1 and tpot_count == 1
    within(itl_sum / itl_count, client_itl, "mean inter-token latency")
    within(tpot_sum, client_tpot, "time per output token")


class BurstyEngine(http.server.BaseHTTPRequestHandler):
    """Sends its stream's tokens in bursts: one token, then BURSTS writes of PER_BURST
    events each, GAP_S apart, as an engine faster than its reader is read."""

    BURSTS, PER_BURST, GAP_S = 10, 4, 0.06

    def log_message(self, *args: object) -> None:  # keep the test's output clean
        pass

    def do_GET(self) -> None:
        self._send(b'{"status":"ok"}', "application/json")

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers["Content-Length"]))
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.end_headers()
        self.wfile.write(_event({"content": "t"}))
        for _ in range(self.BURSTS):
            time.sleep(self.GAP_S)
            self.wfile.write(b"".join(_event({"content": "t"}) for _ in range(self.PER_BURST)))
        tokens = 1 + self.BURSTS * self.PER_BURST
        usage = {"prompt_tokens": 3, "completion_tokens": tokens, "total_tokens": tokens + 3}
        self.wfile.write(b"data: " + json.dumps({"choices": [], "usage": usage}).encode()
                         + b"\n\ndata: [DONE]\n\n")

    def _send(self, body: bytes, ctype: str) -> None:
        self.send_response(200)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def _event(delta: dict[str, str]) -> bytes:
    chunk = {"object": "chat.completion.chunk", "choices": [{"index": 0, "delta": delta}]}
    return b"data: " + json.dumps(chunk).encode() + b"\n\n"


@pytest.fixture
def bursty_engine() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", free_port()), BurstyEngine)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_events_read_together_get_their_share_of_the_time_scripted_engine_bursts(
    gateways: GatewayFactory, bursty_engine: str, tmp_path: Path
) -> None:
    gw = gateways.start(models={"tiny": {"replicas": [bursty_engine]}})
    key = gw.new_key("bursts")
    times, completion = stream(gw, key, 64)
    assert len(times) == completion == 1 + BurstyEngine.BURSTS * BurstyEngine.PER_BURST
    client_itl = (times[-1] - times[0]) / (len(times) - 1)
    itl_sum, itl_count, buckets = histogram(gw, "itl")
    tpot_sum, _, _ = histogram(gw, "tpot")
    within(itl_sum / itl_count, client_itl, "mean inter-token latency")
    within(tpot_sum, client_itl, "time per output token")
    # Every gap is a share of a burst's interval: the typical one is the client's mean,
    # not zero, as it read when each burst's events shared one timestamp.
    lower, upper = median_bucket(buckets, itl_count)
    assert lower < client_itl <= upper, (
        f"the gateway's median inter-token latency lies in ({lower}, {upper}] s; the client"
        f" measured {client_itl:.4f} s per token")
