"""Exchanges with engines over plain HTTP/1.1: kept-alive connections per replica.

Every completion goes through here, so what it costs is paid per request: aiohttp's
general client (URL objects, header multidicts, auto headers, a request and a response
object per exchange) took about a quarter of the gateway's CPU for one, and about half a
millisecond of a stream's first token. This one writes the request in one piece and parses
the answer with httptools (the parser uvicorn already uses); a stream's body is handed on
as it arrives (`StreamedAnswer`). A connection the engine keeps alive is used again
(llama-server closes one after every stream; vLLM and SGLang keep theirs). https://
replicas keep aiohttp.

Errors are the ones the proxy already knows: OSError (a connection refused, reset or closed
early, an answer that is not HTTP) and TimeoutError (no connection within `connect_s`).
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from dataclasses import dataclass
from typing import cast
from urllib.parse import urlsplit

import httptools


@dataclass(frozen=True)
class Answer:
    status: int
    content_type: str
    body: bytes


class _Connection(asyncio.Protocol):
    """A connection to a replica whose answers httptools parses: what both kinds share."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.content_type = ""
        self.delimited = False  # the answer says where it ends (length or chunks)
        self.idle_since = 0.0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(ConnectionError(f"the engine's answer is not HTTP/1.1 ({exc})"))

    def on_header(self, name: bytes, value: bytes) -> None:
        lower = name.lower()
        if lower == b"content-type":
            self.content_type = value.decode("latin-1")
        elif lower in (b"content-length", b"transfer-encoding"):
            self.delimited = True

    def _fail(self, exc: Exception) -> None:
        raise NotImplementedError


class _Exchange(_Connection):
    """One connection to a replica; answers one request at a time."""

    def __init__(self) -> None:
        super().__init__()
        self.waiter: asyncio.Future[Answer] | None = None
        self.body: list[bytes] = []
        self.headers_done = False
        self.keep_alive = False

    def connection_lost(self, exc: Exception | None) -> None:
        if self.waiter is None or self.waiter.done():
            return
        if self.headers_done and not self.delimited:
            self._answer()  # an answer whose end is the end of the connection
            return
        self._fail(ConnectionResetError("the engine closed the connection before it answered"))

    # httptools callbacks
    def on_headers_complete(self) -> None:
        self.headers_done = True

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        # Read here: once the callback returns the parser is ready for the next answer
        # and has forgotten this one's Connection header.
        self.keep_alive = self.parser.should_keep_alive()
        self._answer()

    def _answer(self) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(Answer(self.parser.get_status_code(), self.content_type,
                                          b"".join(self.body)))

    def _fail(self, exc: Exception) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(exc)
        if self.transport is not None:
            self.transport.abort()

    def reusable(self) -> bool:
        return self.keep_alive and self.transport is not None and not self.transport.is_closing()

    async def send(self, request: bytes) -> Answer:
        assert self.transport is not None
        self.waiter = asyncio.get_running_loop().create_future()
        self.body, self.content_type = [], ""
        self.delimited = self.headers_done = self.keep_alive = False
        self.transport.write(request)
        return await self.waiter


class StreamedAnswer(_Connection):
    """One streamed exchange with a replica: its status and headers, then its body as it comes.

    Shaped as much of aiohttp's ClientResponse as the proxy uses (`status`, `read`,
    `content.readany`, `close`, `release`, `closed`), so https:// replicas can keep aiohttp.
    Reading pauses while more than `HIGH` bytes wait for a slow client.
    """

    HIGH = 1 << 20

    def __init__(self) -> None:
        super().__init__()
        self.pool: UpstreamPool | None = None
        self.url = ""
        self._reset()

    def _reset(self) -> None:
        self.status = 0
        self.content_type = ""
        self.chunks: deque[bytes] = deque()
        self.buffered = 0
        self.delimited = self.headers_done = self.ended = self.keep_alive = False
        self.paused = False
        self.error: Exception | None = None
        self.waiter: asyncio.Future[None] | None = None
        self.closed = False

    @property
    def content(self) -> StreamedAnswer:
        return self

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.ended and self.error is None:
            if self.headers_done and not self.delimited:
                self.ended = True  # an answer whose end is the end of the connection
            else:
                self.error = ConnectionResetError(
                    "the engine closed the connection before its answer ended")
        self.closed = True
        self._wake()

    # httptools callbacks
    def on_headers_complete(self) -> None:
        self.headers_done = True
        self.status = self.parser.get_status_code()
        self._wake()

    def on_body(self, body: bytes) -> None:
        self.chunks.append(body)
        self.buffered += len(body)
        if self.buffered > self.HIGH and not self.paused and self.transport is not None:
            self.paused = True
            self.transport.pause_reading()
        self._wake()

    def on_message_complete(self) -> None:
        self.keep_alive = self.parser.should_keep_alive()
        self.ended = True
        self._wake()

    def _wake(self) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)

    def _fail(self, exc: Exception) -> None:
        self.error = exc
        if self.transport is not None:
            self.transport.abort()
        self._wake()

    async def _wait(self) -> None:
        self.waiter = asyncio.get_running_loop().create_future()
        try:
            await self.waiter
        finally:
            self.waiter = None

    async def start(self, request: bytes) -> None:
        """Send the request; return once the answer's status and headers are in."""
        assert self.transport is not None
        self._reset()
        self.transport.write(request)
        while not self.headers_done:
            if self.error is not None:
                raise self.error
            await self._wait()

    async def readany(self) -> bytes:
        """The body's next bytes as they came; b"" once it has ended."""
        while not self.chunks and not self.ended and self.error is None:
            await self._wait()
        if self.chunks:
            chunk = self.chunks.popleft()
            self.buffered -= len(chunk)
            if self.paused and self.buffered < self.HIGH // 2 and self.transport is not None:
                self.paused = False
                self.transport.resume_reading()
            return chunk
        if self.error is not None:
            raise self.error
        return b""

    async def read(self) -> bytes:
        parts = []
        while chunk := await self.readany():
            parts.append(chunk)
        return b"".join(parts)

    def close(self) -> None:
        """Done with the answer: its connection is used again when the engine keeps it and
        the whole answer was read, else closed (an engine still sending stops)."""
        if self.closed:
            return
        self.closed = True
        reusable = (self.ended and self.keep_alive and not self.chunks and self.error is None
                    and self.transport is not None and not self.transport.is_closing())
        if reusable and self.pool is not None:
            self.idle_since = time.monotonic()
            self.pool.idle_streams.setdefault(self.url, deque()).append(self)
            return
        if self.error is None:
            self.error = ConnectionResetError("the answer was closed")
        self._wake()
        if self.transport is not None:
            self.transport.abort()

    def release(self) -> None:
        self.close()


@dataclass(frozen=True)
class _Target:
    host: str
    port: int
    host_header: bytes
    prefix: str  # a path the replica URL carries before the API's own


class UpstreamPool:
    """Kept-alive connections to each plain-HTTP replica, dropped after `keepalive_s` idle.

    `keepalive_s` stays well below the engines' own keep-alive timeout (5 s in llama-server
    and uvicorn), so no connection is closed by the engine just as a request goes out on it.

    Example: answer = await pool.exchange("http://127.0.0.1:8081", "POST", "/v1/...", body)
    """

    def __init__(self, connect_s: float, keepalive_s: float = 2.0) -> None:
        self.connect_s = connect_s
        self.keepalive_s = keepalive_s
        self._idle: dict[str, deque[_Exchange]] = {}
        self.idle_streams: dict[str, deque[StreamedAnswer]] = {}
        self._targets: dict[str, _Target] = {}

    @staticmethod
    def handles(url: str) -> bool:
        return url.startswith("http://")

    def _request(self, target: _Target, method: str, path: str, body: bytes | None) -> bytes:
        head = [f"{method} {target.prefix}{path} HTTP/1.1\r\n".encode(), target.host_header]
        if body is not None:
            head.append(b"Content-Type: application/json\r\nContent-Length: %d\r\n" % len(body))
        head.append(b"\r\n")
        if body:
            head.append(body)
        return b"".join(head)

    async def stream(self, url: str, path: str, body: bytes) -> StreamedAnswer:
        """POST `body` and return the answer once its headers are in; close() it when done.

        Example: resp = await pool.stream(url, "/v1/chat/completions", body); await resp.read()
        """
        target = self._target(url)
        conn = self._reuse_stream(url)
        if conn is None:
            loop = asyncio.get_running_loop()
            async with asyncio.timeout(self.connect_s):
                _, conn = await loop.create_connection(StreamedAnswer, target.host, target.port)
            conn.pool, conn.url = self, url
        try:
            await conn.start(self._request(target, "POST", path, body))
        except BaseException:
            conn.error = conn.error or ConnectionResetError("cancelled")
            conn.close()
            raise
        return conn

    def _reuse_stream(self, url: str) -> StreamedAnswer | None:
        idle = self.idle_streams.get(url)
        now = time.monotonic()
        while idle:
            conn = idle.pop()
            transport = conn.transport
            if transport is not None and not transport.is_closing() and \
                    now - conn.idle_since < self.keepalive_s:
                return conn
            if transport is not None:
                transport.close()
        return None

    async def exchange(self, url: str, method: str, path: str, body: bytes | None) -> Answer:
        target = self._target(url)
        request = self._request(target, method, path, body)
        conn = self._reuse(url) or await self._connect(target)
        finished = False
        try:
            answer = await conn.send(request)
            finished = True
        finally:
            if finished and conn.reusable():
                conn.idle_since = time.monotonic()
                self._idle.setdefault(url, deque()).append(conn)
            elif conn.transport is not None:
                # Cancelled or timed out midway: what is left of the answer must not be
                # read as the next request's.
                conn.transport.abort()
        return answer

    def close(self) -> None:
        idle: list[deque[_Exchange] | deque[StreamedAnswer]] = [*self._idle.values(),
                                                                *self.idle_streams.values()]
        for conns in idle:
            while conns:
                transport = conns.pop().transport
                if transport is not None:
                    transport.close()

    def _reuse(self, url: str) -> _Exchange | None:
        idle = self._idle.get(url)
        now = time.monotonic()
        while idle:
            conn = idle.pop()  # the most recently used: the least likely to be closing
            if conn.reusable() and now - conn.idle_since < self.keepalive_s:
                return conn
            if conn.transport is not None:
                conn.transport.close()
        return None

    async def _connect(self, target: _Target) -> _Exchange:
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(self.connect_s):
            _, conn = await loop.create_connection(_Exchange, target.host, target.port)
        return conn

    def _target(self, url: str) -> _Target:
        found = self._targets.get(url)
        if found is None:
            parts = urlsplit(url)
            host = parts.hostname or "127.0.0.1"
            found = self._targets[url] = _Target(
                host, parts.port or 80, f"Host: {parts.netloc}\r\n".encode(),
                parts.path.rstrip("/"))
        return found
