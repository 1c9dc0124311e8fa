"""Non-streamed exchanges with engines over plain HTTP/1.1: kept-alive connections per replica.

Every completion that is not streamed goes through here, so what it costs is paid per
request: aiohttp's general client (URL objects, header multidicts, auto headers, a request
and a response object per exchange) took about a quarter of the gateway's CPU for one.
This one writes the request in one piece and parses the answer with httptools (the parser
uvicorn already uses). Streams keep aiohttp: llama-server closes the connection after every
streamed response, so those connections are never reused anyway. https:// replicas keep
aiohttp as well.

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


class _Exchange(asyncio.Protocol):
    """One connection to a replica; answers one request at a time."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.waiter: asyncio.Future[Answer] | None = None
        self.body: list[bytes] = []
        self.content_type = ""
        self.delimited = False  # the answer says where it ends (length or chunks)
        self.headers_done = False
        self.keep_alive = False
        self.idle_since = 0.0

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(ConnectionError(f"the engine's answer is not HTTP/1.1 ({exc})"))

    def connection_lost(self, exc: Exception | None) -> None:
        if self.waiter is None or self.waiter.done():
            return
        if self.headers_done and not self.delimited:
            self._answer()  # an answer whose end is the end of the connection
            return
        self._fail(ConnectionResetError("the engine closed the connection before it answered"))

    # httptools callbacks
    def on_header(self, name: bytes, value: bytes) -> None:
        lower = name.lower()
        if lower == b"content-type":
            self.content_type = value.decode("latin-1")
        elif lower in (b"content-length", b"transfer-encoding"):
            self.delimited = True

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
        self._targets: dict[str, _Target] = {}

    @staticmethod
    def handles(url: str) -> bool:
        return url.startswith("http://")

    async def exchange(self, url: str, method: str, path: str, body: bytes | None) -> Answer:
        target = self._target(url)
        head = [f"{method} {target.prefix}{path} HTTP/1.1\r\n".encode(), target.host_header]
        if body is not None:
            head.append(b"Content-Type: application/json\r\nContent-Length: %d\r\n" % len(body))
        head.append(b"\r\n")
        if body:
            head.append(body)
        conn = self._reuse(url) or await self._connect(target)
        finished = False
        try:
            answer = await conn.send(b"".join(head))
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
        for idle in self._idle.values():
            while idle:
                transport = idle.pop().transport
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
