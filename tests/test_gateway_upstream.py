"""The gateway's client for engines (answers whole and streamed), against a real HTTP server on
127.0.0.1.

The server answers by path, so each test chooses how an engine behaves: kept alive, closing
after its answer, an answer whose end is the end of the connection, hanging up early,
answering something that is not HTTP, or answering too late.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest

from podium.services.gateway.upstream import UpstreamPool

OK = b'{"ok":true}'


class Engine:
    """A scripted HTTP/1.1 server: counts connections and records request lines."""

    def __init__(self) -> None:
        self.connections = 0
        self.requests: list[str] = []
        self.bodies: list[bytes] = []

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.decode().split("\r\n")
                self.requests.append(lines[0])
                length = next((int(line.split(":")[1]) for line in lines
                               if line.lower().startswith("content-length:")), 0)
                self.bodies.append(await reader.readexactly(length))
                path = lines[0].split()[1]
                if not await self.answer(path.rsplit("/", 1)[-1], writer):
                    return
        except (asyncio.IncompleteReadError, ConnectionError):
            return
        finally:
            writer.close()

    async def answer(self, how: str, writer: asyncio.StreamWriter) -> bool:
        """Write the answer `how` names; False when the connection ends with it."""
        if how == "keep":
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                         b"Content-Length: %d\r\n\r\n%s" % (len(OK), OK))
        elif how == "chunked":
            writer.write(b"HTTP/1.1 201 Created\r\nContent-Type: application/json\r\n"
                         b"Transfer-Encoding: chunked\r\n\r\n5\r\n{\"ok\"\r\n6\r\n:true}\r\n0\r\n\r\n")
        elif how == "close":
            writer.write(b"HTTP/1.1 503 Service Unavailable\r\nConnection: close\r\n"
                         b"Content-Length: 2\r\n\r\nno")
            await writer.drain()
            return False
        elif how == "until-eof":
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nall of it")
            await writer.drain()
            return False
        elif how == "hang-up":
            return False
        elif how == "sse":
            # Two events, sent apart, chunked as uvicorn and vLLM send a stream.
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                         b"Transfer-Encoding: chunked\r\n\r\n")
            for event in (b"data: one\n\n", b"data: [DONE]\n\n"):
                writer.write(b"%x\r\n%s\r\n" % (len(event), event))
                await writer.drain()
                await asyncio.sleep(0.05)
            writer.write(b"0\r\n\r\n")
        elif how == "sse-cut":
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                         b"Transfer-Encoding: chunked\r\n\r\nd\r\ndata: first\n\n\r\n")
            await writer.drain()
            return False
        elif how == "garbage":
            writer.write(b"SSH-2.0-OpenSSH_9.2\r\n\r\n")
        elif how == "slow":
            await asyncio.sleep(0.5)
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nlate")
        await writer.drain()
        return True


@asynccontextmanager
async def engine() -> AsyncIterator[tuple[Engine, str]]:
    e = Engine()
    server = await asyncio.start_server(e.handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield e, f"http://127.0.0.1:{port}"
    finally:
        server.close()
        await server.wait_closed()


def run(test: Callable[[Engine, str, UpstreamPool], Awaitable[Any]],
        keepalive_s: float = 2.0) -> None:
    async def main() -> None:
        pool = UpstreamPool(connect_s=2.0, keepalive_s=keepalive_s)
        try:
            async with engine() as (e, url):
                await test(e, url, pool)
        finally:
            pool.close()

    asyncio.run(main())


def test_answers_are_read_whole_and_one_connection_serves_them_all() -> None:
    async def test(e: Engine, url: str, pool: UpstreamPool) -> None:
        first = await pool.exchange(url, "POST", "/v1/keep", b'{"a":1}')
        second = await pool.exchange(url, "POST", "/v1/chunked", b'{"b":2}')
        third = await pool.exchange(url, "GET", "/v2/keep", None)
        assert (first.status, first.content_type, first.body) == (200, "application/json", OK)
        assert (second.status, second.body) == (201, OK)  # chunks joined
        assert third.status == 200
        assert e.connections == 1
        assert e.requests == ["POST /v1/keep HTTP/1.1", "POST /v1/chunked HTTP/1.1",
                              "GET /v2/keep HTTP/1.1"]
        assert e.bodies == [b'{"a":1}', b'{"b":2}', b""]

    run(test)


def test_a_replica_url_with_a_path_keeps_it_before_the_api_path() -> None:
    async def test(e: Engine, url: str, pool: UpstreamPool) -> None:
        await pool.exchange(url + "/engine-a/", "POST", "/v1/keep", b"{}")
        assert e.requests == ["POST /engine-a/v1/keep HTTP/1.1"]

    run(test)


def test_an_engine_that_closes_after_its_answer_gets_a_new_connection_next() -> None:
    async def test(e: Engine, url: str, pool: UpstreamPool) -> None:
        closing = await pool.exchange(url, "POST", "/v1/close", b"{}")
        assert (closing.status, closing.body) == (503, b"no")
        assert (await pool.exchange(url, "POST", "/v1/keep", b"{}")).body == OK
        assert e.connections == 2

    run(test)


def test_an_answer_without_length_ends_with_its_connection() -> None:
    async def test(e: Engine, url: str, pool: UpstreamPool) -> None:
        answer = await pool.exchange(url, "POST", "/v1/until-eof", b"{}")
        assert (answer.status, answer.content_type, answer.body) == (200, "text/plain",
                                                                     b"all of it")

    run(test)


def test_an_engine_that_hangs_up_or_is_not_http_fails_the_exchange_as_oserror() -> None:
    async def test(e: Engine, url: str, pool: UpstreamPool) -> None:
        with pytest.raises(ConnectionResetError, match="before it answered"):
            await pool.exchange(url, "POST", "/v1/hang-up", b"{}")
        with pytest.raises(ConnectionError, match="not HTTP"):
            await pool.exchange(url, "POST", "/v1/garbage", b"{}")
        # Neither connection is used again: the next request works on a fresh one.
        assert (await pool.exchange(url, "POST", "/v1/keep", b"{}")).body == OK
        assert e.connections == 3

    run(test)


def test_a_refused_connection_is_an_oserror() -> None:
    async def test(e: Engine, url: str, pool: UpstreamPool) -> None:
        with pytest.raises(OSError):
            # Port 9 on 127.0.0.1 (discard) has no listener here.
            await pool.exchange("http://127.0.0.1:9", "POST", "/v1/keep", b"{}")

    run(test)


def test_an_exchange_cut_off_midway_never_hands_its_late_answer_to_the_next() -> None:
    async def test(e: Engine, url: str, pool: UpstreamPool) -> None:
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.1):
                await pool.exchange(url, "POST", "/v1/slow", b"{}")
        await asyncio.sleep(0.6)  # the late answer would have arrived by now
        answer = await pool.exchange(url, "POST", "/v1/keep", b"{}")
        assert answer.body == OK
        assert e.connections == 2

    run(test)


def test_a_connection_idle_past_the_keepalive_is_not_reused() -> None:
    async def test(e: Engine, url: str, pool: UpstreamPool) -> None:
        await pool.exchange(url, "POST", "/v1/keep", b"{}")
        await asyncio.sleep(0.3)
        await pool.exchange(url, "POST", "/v1/keep", b"{}")
        assert e.connections == 2

    run(test, keepalive_s=0.2)


def test_a_stream_comes_as_it_is_sent_and_a_kept_alive_connection_serves_the_next() -> None:
    async def test(e: Engine, url: str, pool: UpstreamPool) -> None:
        for _ in range(2):
            resp = await pool.stream(url, "/v1/sse", b"{}")
            assert (resp.status, resp.content_type) == (200, "text/event-stream")
            first = await resp.content.readany()
            assert first == b"data: one\n\n"  # before the second event was even sent
            assert await resp.read() == b"data: [DONE]\n\n"
            resp.close()
        assert e.connections == 1  # the engine kept it alive: the second stream reused it
        assert e.requests == ["POST /v1/sse HTTP/1.1"] * 2

    run(test)


def test_a_stream_the_engine_cuts_off_fails_as_oserror_and_its_connection_is_not_reused() -> None:
    async def test(e: Engine, url: str, pool: UpstreamPool) -> None:
        resp = await pool.stream(url, "/v1/sse-cut", b"{}")
        assert await resp.content.readany() == b"data: first\n\n"
        with pytest.raises(OSError):
            await resp.content.readany()
        resp.close()
        closing = await pool.stream(url, "/v1/close", b"{}")
        assert (closing.status, await closing.read()) == (503, b"no")
        closing.release()
        assert (await pool.exchange(url, "POST", "/v1/keep", b"{}")).body == OK
        assert e.connections == 3

    run(test)
