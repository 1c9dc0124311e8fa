"""Forwarding to engines: the one place that streams, with one retry before the first byte.

A request that cannot connect, or gets a 5xx (or a dropped connection) before its first
byte, is retried once on another replica. Non-streamed answers are buffered, metered,
then sent. Streams are relayed event by event; the usage record is committed before the
final `data: [DONE]`, and a stream that breaks midway ends with an SSE error event.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Iterator
from typing import Any, Protocol

import aiohttp
from starlette.responses import Response
from starlette.types import Message, Receive, Scope, Send

from podium.services.gateway import errors
from podium.services.gateway.counting import EngineTokenizer, count_unreported
from podium.services.gateway.errors import GatewayError, error_body
from podium.services.gateway.metering import UsageRecord, tokens_of, usage_in_body
from podium.services.gateway.replicas import EngineReplica
from podium.services.gateway.runtime import Call, Gateway
from podium.services.gateway.upstream import StreamedAnswer

log = logging.getLogger("podium.gateway")
_JSON = {"Content-Type": "application/json"}
# An answer from the engine's gRPC endpoint: the serialized reply (grpc_upstream.GRPC_ANSWER).
GRPC_ANSWER = "application/grpc+proto"
_DONE = b"data: [DONE]\n\n"
# Markers of a chunk that carries generated text (compact and spaced JSON).
_TOKEN_MARKS = (
    b'"content":"', b'"content": "', b'"text":"', b'"text": "',
    b'"reasoning_content":"', b'"reasoning_content": "',
)
MAX_EVENT = 16 * 1024 * 1024
_UPSTREAM_ERRORS = (aiohttp.ClientError, OSError, asyncio.IncompleteReadError)


class _Failed(Exception):
    """An attempt that failed before its first byte reached the client (so may be retried)."""

    def __init__(self, why: str, status: int = 502, body: bytes = b"") -> None:
        super().__init__(why)
        self.why = why
        self.status = status
        self.body = body


def _unsupported(call: Call, payload: bytes) -> bytes:
    """An engine's 501 ("not supported", e.g. embeddings switched off) as the 400 OpenAI gives."""
    try:
        detail = str(json.loads(payload)["error"]["message"])
    except (ValueError, KeyError, TypeError):
        detail = payload[:200].decode(errors="replace")
    return error_body(f"model {call.model!r} does not support {call.endpoint}: {detail}",
                      "invalid_request_error", code="unsupported_by_model")


def _retryable(status: int) -> bool:
    # 501 means "this engine does not do that" (e.g. embeddings off): the same everywhere,
    # so it is passed through rather than retried or held against the replica.
    return status >= 500 and status != 501


def _final_error(call: Call, failure: _Failed | None) -> GatewayError:
    # The client learns that the engine failed and the request id, never the engine's
    # address, a path or an exception: those are in the gateway's log under the same id.
    rid = call.request_id
    if failure is None:
        error = errors.unavailable(f"model {call.model!r} has no healthy replica with room; retry")
    else:
        log.warning("request %s (model %r): %s", rid, call.model, failure.why)
        if failure.status == 503:
            error = errors.unavailable(
                f"model {call.model!r} is unavailable right now; retry (request id {rid})")
        elif failure.status == 504:
            error = errors.gateway_timeout(
                f"model {call.model!r} did not answer in time (request id {rid})")
        else:
            error = errors.bad_gateway(f"model {call.model!r} failed to answer (request id {rid})")
    error.headers["x-request-id"] = rid
    return error


def _upstream_failure(exc: BaseException, what: str) -> _Failed:
    if isinstance(exc, TimeoutError):
        return _Failed(f"the engine did not answer {what} in time", 504)
    return _Failed(
        f"the engine could not be reached or dropped the connection ({type(exc).__name__}: {exc})"
    )


class EngineCall(Protocol):
    """A gRPC call for the engine's own gRPC endpoint (grpc_upstream.EngineCall)."""

    async def send(self, target: str, timeout: float) -> tuple[int, bytes]: ...


async def forward(
    gw: Gateway, call: Call, method: str, path: str, body: bytes | None, *,
    stream: bool = False, strip_usage: bool = False, grpc: EngineCall | None = None,
) -> Response | StreamRelay:
    """Send a request to a replica of the call's model and return the answer to relay; `grpc`
    goes to the replica's gRPC endpoint instead, where its config names one."""
    tried: set[str] = set()
    failure: _Failed | None = None
    seq = gw.next_seq()
    for attempt in range(2):
        replica = call.replicas.pick(seq, frozenset(tried))
        if replica is None:
            break
        if attempt:
            gw.metrics.retries.labels(call.model).inc()
        tried.add(replica.url)
        call.replicas.acquire(replica)
        handed_off = False
        try:
            if stream:
                result = await _open_stream(gw, call, replica, path, body or b"", strip_usage)
                # From here the relay owns the replica slot and releases it when done.
                handed_off = isinstance(result, StreamRelay)
                return result
            return await _exchange(gw, call, replica, method, path, body, grpc)
        except _Failed as exc:
            # A plain 500 may be this request's own doing (MLServer answers 500 to inputs
            # its model cannot take): retried, but not held against the replica, so one bad
            # request cannot eject every replica. Probes catch replicas that fail everything.
            if exc.status != 500:
                call.replicas.failed(replica, exc.why)
            failure = exc
            if exc.status == 504:
                break  # a timed-out request already cost its full wait; do not double it
        finally:
            if not handed_off:
                call.replicas.release(replica)
    error = _final_error(call, failure)
    if failure is not None and failure.status == 500 and call.replicas.config.kind == "predictive":
        error = errors.bad_request(
            f"model {call.model!r} could not run on these inputs (the engine answered HTTP 500"
            f" twice); check input names, shapes and datatypes against GET /v2/models/{call.model}"
        )
    await gw.record(call, call.usage("", error.status, None))
    raise error


async def _exchange(
    gw: Gateway, call: Call, replica: EngineReplica, method: str, path: str, body: bytes | None,
    grpc: EngineCall | None = None,
) -> Response:
    assert gw.json_client is not None and gw.upstream is not None
    t = gw.config.timeouts
    target = call.replicas.config.grpc_target(replica.url) if grpc is not None else None
    try:
        async with asyncio.timeout(t.first_byte_s + t.read_s):
            if grpc is not None and target is not None:
                status, payload = await grpc.send(target, t.first_byte_s + t.read_s)
                ctype = GRPC_ANSWER
            elif gw.upstream.handles(replica.url):
                answer = await gw.upstream.exchange(replica.url, method, path, body)
                payload, status = answer.body, answer.status
                ctype = answer.content_type or "application/json"
            else:
                async with gw.json_client.request(
                    method, replica.url + path, data=body, headers=_JSON if body else None
                ) as resp:
                    payload = await resp.read()
                    status = resp.status
                    ctype = resp.headers.get("Content-Type", "application/json")
    except _UPSTREAM_ERRORS + (TimeoutError,) as exc:
        raise _upstream_failure(exc, "before its time limit") from None
    if _retryable(status):
        raise _Failed(f"the engine answered HTTP {status}", status, payload)
    if status == 501:
        status, payload, ctype = 400, _unsupported(call, payload), "application/json"
    call.replicas.succeeded(replica)
    tokens = usage_in_body(payload) if status == 200 and call.endpoint.startswith("/v1") else None
    # Committed before a single byte is sent: a completed answer always has its record.
    await gw.record(call, call.usage(replica.url, status, tokens))
    return Response(payload, status, media_type=ctype.split(";")[0] if ctype else None,
                    headers={"x-request-id": call.request_id})


class SseReader:
    """Complete server-sent events from an upstream body, as many as have arrived per read.

    One read takes whatever the socket holds, so events that arrive together (an engine
    faster than its reader, a busy host) are relayed together in one send instead of one
    await and one write each.
    """

    def __init__(self, content: aiohttp.StreamReader | StreamedAnswer) -> None:
        self.content = content
        self.buffer = b""

    async def batch(self) -> list[bytes] | None:
        """The next events (each with its blank line), None once the body has ended."""
        while True:
            if b"\n\n" in self.buffer:
                *events, self.buffer = self.buffer.split(b"\n\n")
                complete = [event + b"\n\n" for event in events if event.strip()]
                if complete:
                    return complete
            chunk = await self.content.readany()
            if not chunk:
                rest, self.buffer = self.buffer.strip(), b""
                return [rest + b"\n\n"] if rest else None
            self.buffer += chunk
            if b"\r" in self.buffer:  # the SSE spec allows CRLF line ends; split on one form
                self.buffer = self.buffer.replace(b"\r\n", b"\n")
            if len(self.buffer) > MAX_EVENT:
                raise _Failed(f"the engine sent an event over {MAX_EVENT} bytes")


async def _open_stream(
    gw: Gateway, call: Call, replica: EngineReplica, path: str, body: bytes, strip_usage: bool
) -> Response | StreamRelay:
    assert gw.stream_client is not None
    t = gw.config.timeouts
    resp: aiohttp.ClientResponse | StreamedAnswer | None = None
    try:
        async with asyncio.timeout(t.first_byte_s):
            if gw.upstream is not None and gw.upstream.handles(replica.url):
                resp = await gw.upstream.stream(replica.url, path, body)
            else:
                resp = await gw.stream_client.post(replica.url + path, data=body, headers=_JSON)
            if resp.status != 200:
                payload = await resp.read()
                resp.release()
                if _retryable(resp.status):
                    raise _Failed(f"the engine answered HTTP {resp.status}", resp.status, payload)
                status = resp.status
                if status == 501:
                    status, payload = 400, _unsupported(call, payload)
                await gw.record(call, call.usage(replica.url, status, None))
                return Response(payload, status, media_type="application/json")
            reader = SseReader(resp.content)
            first = await reader.batch()
    except _Failed:
        raise
    except _UPSTREAM_ERRORS + (TimeoutError,) as exc:
        if resp is not None:
            resp.close()
        raise _upstream_failure(exc, "its first token") from None
    except BaseException:
        if resp is not None:
            resp.close()
        raise
    if first is None:
        resp.close()
        raise _Failed("the engine closed the stream before its first event")
    return StreamRelay(gw, call, replica, resp, reader, first, strip_usage)


def _data(event: bytes) -> bytes:
    if event.startswith(b"data:"):
        return event[5:].strip()
    return b""


def _chunk_usage(data: bytes) -> tuple[tuple[int, int], dict[str, Any]] | None:
    """The token counts a chunk reports, with the parsed chunk; None when it has none."""
    if b'"usage"' not in data:
        return None
    try:
        chunk = json.loads(data)
    except ValueError:
        return None
    if not isinstance(chunk, dict):
        return None
    tokens = tokens_of(chunk.get("usage"))
    if tokens is None:
        return None
    return tokens, chunk


def _without_usage(chunk: dict[str, Any]) -> bytes | None:
    """The chunk as a client that did not ask for usage sees it from OpenAI (None: not at all)."""
    if not chunk.get("choices"):
        return None
    # Some engines (llama-server's /v1/completions) report usage on the last text chunk.
    chunk.pop("usage", None)
    return b"data: " + json.dumps(chunk, separators=(",", ":")).encode() + b"\n\n"


def _has_token(data: bytes) -> bool:
    for mark in _TOKEN_MARKS:
        at = data.find(mark)
        if at >= 0 and data[at + len(mark): at + len(mark) + 1] != b'"':
            return True
    return False


def error_event(message: str, code: str = "upstream_error") -> bytes:
    body = {"error": {"message": message, "type": "server_error", "param": None, "code": code}}
    return b"data: " + json.dumps(body).encode() + b"\n\n"


class StreamRelay:
    """An ASGI response relaying one upstream SSE stream, metering it as it goes.

    Its own ASGI callable rather than Starlette's StreamingResponse so that the replica,
    the upstream connection and the usage record are settled whatever the client does,
    even when it leaves before the first byte.
    """

    def __init__(self, gw: Gateway, call: Call, replica: EngineReplica,
                 resp: aiohttp.ClientResponse | StreamedAnswer, reader: SseReader,
                 first: list[bytes],
                 strip_usage: bool) -> None:
        self.gw, self.call, self.replica, self.resp = gw, call, replica, resp
        self.reader = reader
        self.first = first
        self.strip_usage = strip_usage
        self.client_gone = False
        self.recorded = False
        self.released = False
        self.tokens: tuple[int, int] | None = None
        self.token_chunks = 0
        # The data of every event that carried text, counted if the engine never says.
        self.text_events: list[bytes] = []
        self.first_token: float | None = None
        self.last_token: float | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        watcher = asyncio.get_running_loop().create_task(self._watch(receive))
        try:
            await send({
                "type": "http.response.start",
                "status": 200,
                "headers": [
                    (b"content-type", b"text/event-stream; charset=utf-8"),
                    (b"cache-control", b"no-cache"),
                    (b"x-accel-buffering", b"no"),
                    (b"x-request-id", self.call.request_id.encode()),
                ],
            })
            async for chunk in self._events():
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        finally:
            watcher.cancel()
            self._settle(499)

    async def _watch(self, receive: Receive) -> None:
        message: Message = await receive()
        while message["type"] != "http.disconnect":
            message = await receive()
        # Closing the upstream response ends the pending read, and the engine's work.
        self.client_gone = True
        self.resp.close()

    def _settle(self, status: int) -> None:
        """Release the replica and queue a record if none was written (client gone)."""
        if not self.resp.closed:
            self.resp.close()
        if not self.recorded:
            self.recorded = True
            self.gw.bill_later(self.call, self._bill(status))
        if not self.released:
            self.released = True
            self.call.replicas.release(self.replica)
            self.gw.end_call()

    async def _bill(self, status: int) -> None:
        """Record a stream that ended early: the engine's usage if it came, else a count."""
        if self.tokens is None:
            self.tokens = await self._count()
        record = self._record(status)
        with contextlib.suppress(GatewayError):  # logged, and the client is gone anyway
            await self.gw.record(self.call, record)

    async def _count(self) -> tuple[int, int]:
        assert self.gw.json_client is not None
        config = self.call.replicas.config
        tokenizer = EngineTokenizer(self.gw.json_client, self.replica.url,
                                    config.served_name or self.call.model)
        return await count_unreported(tokenizer, self.call.endpoint, self.call.body or {},
                                      self.call.body_bytes, self.text_events, self.token_chunks)

    def _record(self, status: int) -> UsageRecord:
        tokens = self.tokens or (0, self.token_chunks)
        ttft = None if self.first_token is None else self.first_token - self.call.started
        return self.call.usage(self.replica.url, status, tokens, ttft)

    def _relay(self, event: bytes, data: bytes, token: bool, now: float) -> bytes | None:
        """One upstream event (and its data) as the client gets it (None: not at all), metered;
        `token`: whether it carries text, `now`: its timestamp."""
        out: bytes | None = event
        found = _chunk_usage(data)
        if found is not None:
            self.tokens = found[0]
            if self.strip_usage:
                out = _without_usage(found[1])
        if token:
            m, model = self.gw.metrics, self.call.model
            if self.first_token is None:
                self.first_token = now
                m.child(m.ttft, model).observe(now - self.call.started)
            else:
                assert self.last_token is not None
                m.child(m.itl, model).observe(now - self.last_token)
            self.last_token = now
            self.token_chunks += 1
            self.text_events.append(data)
        return out

    def _stamps(self, count: int, now: float) -> Iterator[float]:
        """Timestamps for the `count` token events of one read, arrived by `now`.

        Events that arrive in one read (an engine faster than the gateway reads, a busy
        host) were produced over the time since the previous token: each gets its share of
        it, the last `now`, so inter-token latency reads the pace the tokens came at
        instead of one real interval and zeros. The first read has no previous token: its
        events all get `now`.
        """
        since = now if self.last_token is None else self.last_token
        step = (now - since) / count if count else 0.0
        return (since + step * i for i in range(1, count + 1))

    async def _events(self) -> Any:
        m, model, gw = self.gw.metrics, self.call.model, self.gw
        read_s = gw.config.timeouts.read_s
        batch: list[bytes] | None = self.first
        done = False
        try:
            while batch is not None:
                now = time.perf_counter()
                out: list[bytes] = []
                datas = [_data(event) for event in batch]
                tokens = [_has_token(data) for data in datas]
                stamps = self._stamps(sum(tokens), now)
                for event, data, token in zip(batch, datas, tokens, strict=True):
                    if data == b"[DONE]":
                        done = True
                        break
                    relayed = self._relay(event, data, token, next(stamps) if token else now)
                    if relayed is not None:
                        out.append(relayed)
                if out:
                    yield b"".join(out)
                if done:
                    break
                async with asyncio.timeout(read_s):
                    batch = await self.reader.batch()
            if not done:
                raise _Failed("the engine ended the stream without [DONE]")
        except (_Failed, TimeoutError, *_UPSTREAM_ERRORS) as exc:
            if self.client_gone:
                return
            why = exc.why if isinstance(exc, _Failed) else (
                "no token within the read timeout" if isinstance(exc, TimeoutError)
                else f"the connection to the engine broke ({type(exc).__name__})"
            )
            m.stream_errors.labels(model).inc()
            self.call.replicas.failed(self.replica, why)
            self._settle(502)
            rid = self.call.request_id
            log.warning("request %s (model %r): the stream broke off: %s", rid, model, why)
            yield error_event(f"model {model!r}: the stream broke off (request id {rid})")
            return
        self.call.replicas.succeeded(self.replica)
        if self.tokens is None:  # an engine that ignores include_usage
            self.tokens = await self._count()
        self._observe_tpot()
        record = self._record(200)
        self.recorded = True
        try:
            # Committed before [DONE]: a client that saw the end of its stream is billed.
            await gw.record(self.call, record)
        except GatewayError as exc:
            yield error_event(exc.message, "usage_store_unavailable")
            return
        yield _DONE

    def _observe_tpot(self) -> None:
        if self.first_token is None or self.last_token is None or self.tokens is None:
            return
        generated = self.tokens[1]
        if generated > 1:
            self.gw.metrics.tpot.labels(self.call.model).observe(
                (self.last_token - self.first_token) / (generated - 1)
            )
