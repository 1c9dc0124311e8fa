"""A scripted OpenAI engine on 127.0.0.1 for metering tests: several tokens per event, its own counts.

Its tokenizer is whitespace: a token is a word, plus one for the start of a prompt. Each
streamed event carries `words_per_event` words; what the user asks for picks the script:
"slow" sends events until the client leaves (or 300 of them), "cut" breaks the connection
after four events, "usage" ends normally with the usage event and [DONE], "silent" ends
with [DONE] but never reports usage; an answer not streamed is max_tokens words. What each
request was sent, by the engine's own count, is kept in `sent` under the user's text.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import uvicorn

from tests.fixtures_gateway import free_port, wait_http

TEMPLATE = "<|user|> {}"


def count_words(text: str, special: bool) -> int:
    return len(text.split()) + (1 if special else 0)


@dataclass
class ScriptedEngine:
    """The engine, its address and what it counted per request (prompt, completion tokens)."""

    words_per_event: int = 3
    interval_s: float = 0.1
    # False: no /tokenize or /apply-template, as an engine that cannot count for others.
    tokenizer: bool = True
    # True: count as vLLM and SGLang do (no /apply-template; /tokenize takes a chat).
    vllm: bool = False
    port: int = 0
    sent: dict[str, tuple[int, int]] = field(default_factory=dict)
    server: uvicorn.Server | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> ScriptedEngine:
        self.port = free_port()
        config = uvicorn.Config(self.app, host="127.0.0.1", port=self.port, log_level="error",
                                interface="asgi3",
                                lifespan="off")
        self.server = uvicorn.Server(config)
        threading.Thread(target=self.server.run, daemon=True).start()
        wait_http(self.url + "/health")
        return self

    def stop(self) -> None:
        if self.server is not None:
            self.server.should_exit = True

    async def app(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        assert scope["type"] == "http"
        body = b""
        more = True
        while more:
            message = await receive()
            body += message.get("body", b"")
            more = message.get("more_body", False)
        path = scope["path"]
        request = json.loads(body) if body else {}
        if path == "/health":
            await _json(send, {"status": "ok"})
        elif path in ("/apply-template", "/tokenize") and not self.tokenizer:
            await _json(send, {"error": {"message": "not here"}}, 404)
        elif path == "/apply-template" and not self.vllm:
            text = " ".join(m["content"] for m in request["messages"])
            await _json(send, {"prompt": TEMPLATE.format(text)})
        elif path == "/tokenize" and self.vllm:
            # vLLM's own form: a chat or a prompt in, {"count": n, "tokens": [...]} out.
            text = (TEMPLATE.format(" ".join(m["content"] for m in request["messages"]))
                    if "messages" in request else request["prompt"])
            n = count_words(text, "messages" in request or request.get("add_special_tokens", True))
            await _json(send, {"count": n, "tokens": list(range(n)), "max_model_len": 4096})
        elif path == "/tokenize":
            n = count_words(request["content"], bool(request.get("add_special")))
            await _json(send, {"tokens": list(range(n))})
        elif path == "/v1/chat/completions":
            await self._chat(request, receive, send)
        else:
            await _json(send, {"error": {"message": "not here"}}, 404)

    async def _chat(self, request: dict[str, Any], receive: Any, send: Any) -> None:
        script = request["messages"][-1]["content"]
        prompt = count_words(TEMPLATE.format(" ".join(m["content"] for m in request["messages"])),
                             True)
        words = " ".join(["tok"] * self.words_per_event) + " "
        if not request.get("stream"):
            # All of max_tokens, after a pause, so concurrent requests overlap.
            completion = int(request.get("max_tokens") or 12)
            await asyncio.sleep(self.interval_s * 2)
            self.sent[script] = (prompt, completion)
            await _json(send, {
                "id": "x", "object": "chat.completion", "model": request["model"],
                "choices": [{"index": 0, "finish_reason": "stop",
                             "message": {"role": "assistant", "content": "tok " * completion}}],
                "usage": {"prompt_tokens": prompt, "completion_tokens": completion,
                          "total_tokens": prompt + completion}})
            return
        gone = asyncio.Event()

        async def watch() -> None:
            while (await receive())["type"] != "http.disconnect":
                pass
            gone.set()

        watcher = asyncio.get_running_loop().create_task(watch())
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"text/event-stream")]})
        completion = 0
        events = {"slow": 300, "cut": 4}.get(script.split()[0], 10)
        try:
            for _ in range(events):
                if gone.is_set():
                    break
                chunk = {"id": "x", "object": "chat.completion.chunk", "model": request["model"],
                         "choices": [{"index": 0, "delta": {"content": words}}]}
                await send({"type": "http.response.body", "more_body": True,
                            "body": b"data: " + json.dumps(chunk).encode() + b"\n\n"})
                completion += self.words_per_event
                self.sent[script] = (prompt, completion)
                await asyncio.sleep(self.interval_s)
            if script.startswith("cut"):
                raise ConnectionAbortedError("the engine cuts the stream off")
            if script.startswith("usage") and not gone.is_set():
                usage = {"id": "x", "object": "chat.completion.chunk", "choices": [],
                         "usage": {"prompt_tokens": prompt, "completion_tokens": completion,
                                   "total_tokens": prompt + completion}}
                await send({"type": "http.response.body", "more_body": True,
                            "body": b"data: " + json.dumps(usage).encode() + b"\n\n"})
            await send({"type": "http.response.body", "body": b"data: [DONE]\n\n"})
        finally:
            watcher.cancel()


async def _json(send: Any, body: Any, status: int = 200) -> None:
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": json.dumps(body).encode()})


@pytest.fixture
def scripted() -> Iterator[ScriptedEngine]:
    """A scripted engine of the test's own, three words to an event."""
    engine = ScriptedEngine(words_per_event=3).start()
    try:
        yield engine
    finally:
        engine.stop()
