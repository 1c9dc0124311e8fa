"""SseReader: server-sent events cut anywhere by the network come out whole, in order."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from podium.services.gateway import proxy
from podium.services.gateway.proxy import SseReader


class Reads:
    """The body as the socket hands it over: these chunks, then the end."""

    def __init__(self, *chunks: bytes) -> None:
        self.chunks = list(chunks)

    async def readany(self) -> bytes:
        return self.chunks.pop(0) if self.chunks else b""


def events(*chunks: bytes) -> list[list[bytes]]:
    async def run() -> list[list[bytes]]:
        reader = SseReader(Reads(*chunks))  # type: ignore[arg-type]
        out = []
        while (batch := await reader.batch()) is not None:
            out.append(batch)
        return out

    return asyncio.run(run())


def test_events_arriving_together_come_out_as_one_batch() -> None:
    assert events(b"data: 1\n\ndata: 2\n\ndata: [DONE]\n\n") == [
        [b"data: 1\n\n", b"data: 2\n\n", b"data: [DONE]\n\n"]
    ]


def test_an_event_cut_across_reads_is_held_until_whole() -> None:
    assert events(b"data: {\"a\"", b": 1}\n", b"\ndata: 2", b"\n\n") == [
        [b"data: {\"a\": 1}\n\n"], [b"data: 2\n\n"]
    ]


def test_crlf_line_ends_even_split_between_reads() -> None:
    assert events(b"data: 1\r\n\r", b"\ndata: 2\r", b"\n\r\n") == [
        [b"data: 1\n\n"], [b"data: 2\n\n"]
    ]


def test_multi_line_events_stay_whole_and_blank_lines_are_skipped() -> None:
    assert events(b"\n\nevent: x\ndata: 1\n\n\n\n") == [[b"event: x\ndata: 1\n\n"]]


def test_a_last_event_without_its_blank_line_is_still_delivered() -> None:
    assert events(b"data: 1\n\ndata: 2") == [[b"data: 1\n\n"], [b"data: 2\n\n"]]


def test_an_endless_event_is_refused_not_buffered(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(proxy, "MAX_EVENT", 64)
    with pytest.raises(proxy._Failed, match="over 64 bytes"):
        events(*(b"x" * 40 for _ in range(3)))


def test_an_empty_body_has_no_events() -> None:
    result: Any = events()
    assert result == []
