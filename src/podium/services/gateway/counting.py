"""Token counts for a stream the engine never reported usage for, from the engine's tokenizer.

A stream the client abandons, or that the engine cuts off, ends before the engine's final
usage event. Its prompt is then counted by the engine itself: llama-server renders a chat
with POST /apply-template and counts the result with POST /tokenize; vLLM and SGLang count
a chat or a prompt with POST /tokenize. The completion is the text relayed, counted the same
way, and never fewer than the events that carried text (each carries at least one token).
When the engine cannot count (it died, or has no /tokenize), the estimate is one token per
UTF-8 byte: no tokenizer makes a token of less than a byte, so it never bills too little.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

import aiohttp

log = logging.getLogger("podium.gateway")
COUNT_TIMEOUT_S = 5.0
# A count of the largest prompt the gateway takes (16 MiB) fits well within this.
MAX_ANSWER = 32 * 1024 * 1024
_TEXT_FIELDS = ("content", "reasoning_content", "text")


def relayed_text(events: list[bytes]) -> dict[int, str]:
    """The text each choice of a stream got, from the data of its relayed events."""
    texts: dict[int, list[str]] = {}
    for data in events:
        try:
            chunk = json.loads(data)
        except ValueError:
            continue
        if not isinstance(chunk, dict):
            continue
        for choice in chunk.get("choices") or ():
            if not isinstance(choice, dict):
                continue
            parts = texts.setdefault(int(choice.get("index") or 0), [])
            delta = choice.get("delta")
            if not isinstance(delta, dict):  # /v1/completions: the text is on the choice
                delta = choice
            for name in _TEXT_FIELDS:
                if isinstance(delta.get(name), str):
                    parts.append(delta[name])
            for call in delta.get("tool_calls") or ():
                function = call.get("function") if isinstance(call, dict) else None
                if isinstance(function, dict):
                    parts.extend(str(function.get(k) or "") for k in ("name", "arguments"))
    return {index: "".join(parts) for index, parts in texts.items()}


class EngineTokenizer:
    """Counts tokens as one replica of the engine does, over its own HTTP API."""

    def __init__(self, client: aiohttp.ClientSession, url: str, model: str) -> None:
        self.client = client
        self.url = url
        self.model = model

    async def _post(self, path: str, body: dict[str, Any]) -> Any:
        async with self.client.post(self.url + path, json=body) as resp:
            # Only a JSON answer of bounded size is a count: an engine that answers with a
            # stream, or without end, is left at once (leaving closes the connection).
            if resp.status != 200 or "json" not in resp.headers.get("Content-Type", ""):
                return None
            answer = bytearray()
            async for chunk in resp.content.iter_any():
                answer += chunk
                if len(answer) > MAX_ANSWER:
                    return None
            return json.loads(answer)

    async def count(self, text: str, *, special: bool) -> int | None:
        # llama-server reads "content", vLLM and SGLang "prompt"; each ignores the other.
        found = await self._post("/tokenize", {
            "model": self.model, "content": text, "prompt": text,
            "add_special": special, "add_special_tokens": special, "parse_special": special,
        })
        return _count_of(found)

    async def chat(self, messages: Any) -> int | None:
        rendered = await self._post("/apply-template", {"messages": messages})
        if isinstance(rendered, dict) and isinstance(rendered.get("prompt"), str):
            return await self.count(rendered["prompt"], special=True)
        return _count_of(await self._post("/tokenize", {"model": self.model,
                                                        "messages": messages}))

    async def prompt(self, endpoint: str, body: dict[str, Any]) -> int | None:
        if endpoint == "/v1/chat/completions":
            return await self.chat(body.get("messages"))
        prompt = body.get("prompt")
        prompts = prompt if isinstance(prompt, list) and prompt and not isinstance(
            prompt[0], int) else [prompt]
        total = 0
        for one in prompts:
            if isinstance(one, list):
                total += len(one)  # already tokens
                continue
            counted = await self.count(str(one), special=True)
            if counted is None:
                return None
            total += counted
        return total


def _count_of(found: Any) -> int | None:
    if not isinstance(found, dict):
        return None
    if isinstance(found.get("count"), int):
        return int(found["count"])
    tokens = found.get("tokens")
    return len(tokens) if isinstance(tokens, list) else None


async def count_unreported(
    tokenizer: EngineTokenizer, endpoint: str, body: dict[str, Any], body_bytes: int,
    events: list[bytes], text_events: int,
) -> tuple[int, int]:
    """(prompt, completion) tokens of a stream that ended without the engine's usage."""
    texts = relayed_text(events)
    prompt: int | None = None
    completion: int | None = 0
    try:
        async with asyncio.timeout(COUNT_TIMEOUT_S):
            prompt = await tokenizer.prompt(endpoint, body)
            for text in texts.values():
                counted = await tokenizer.count(text, special=False) if text else 0
                if counted is None or completion is None:
                    completion = None
                    break
                completion += counted
    except (aiohttp.ClientError, OSError, TimeoutError, ValueError) as exc:
        log.warning("engine at %s could not count tokens (%s); billing the byte estimate",
                    tokenizer.url, type(exc).__name__)
        completion = None
    if prompt is None:
        prompt = body_bytes
    if completion is None:
        completion = sum(len(text.encode()) for text in texts.values())
    return prompt, max(completion, text_events)
