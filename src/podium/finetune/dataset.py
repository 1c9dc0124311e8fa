"""Read and check a chat dataset (JSONL, one conversation per line) before any job starts."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from podium.errors import InvalidInput

ROLES = ("system", "user", "assistant")
# Past this many bad lines the rest are counted, not listed: one fix usually mends them all.
MAX_REPORTED = 10
EXAMPLE = '{"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}]}'


@dataclass(frozen=True)
class ChatDataset:
    """A checked dataset: its conversations, in file order, and the sha256 of its bytes."""

    path: Path
    conversations: tuple[tuple[dict[str, str], ...], ...]
    sha256: str

    @property
    def digest(self) -> str:
        return f"sha256:{self.sha256}"


def load_dataset(path: Path) -> ChatDataset:
    """Read `path`; InvalidInput with one sentence per bad line (its number and the fix).

    Blank lines are skipped. Every other line is a JSON object whose "messages" list holds
    objects with a "role" (system, user or assistant) and a non-empty string "content", with at
    least one assistant message, which is what the adapter learns to say.

    Example:
        >>> load_dataset(Path("chat.jsonl")).conversations[0][-1]["role"]  # doctest: +SKIP
        'assistant'
    """
    try:
        raw = Path(path).read_bytes()
    except OSError as exc:
        raise InvalidInput(f"--data {str(path)!r} cannot be read ({exc.strerror}); "
                           "give a chat JSONL file.") from exc
    conversations: list[tuple[dict[str, str], ...]] = []
    problems: list[str] = []
    for number, line in enumerate(raw.split(b"\n"), start=1):
        if not line.strip():
            continue
        messages, problem = _conversation(line)
        if problem:
            problems.append(f"{path} line {number}: {problem}.")
        else:
            conversations.append(messages)
    if problems:
        shown = problems[:MAX_REPORTED]
        if len(problems) > MAX_REPORTED:
            shown.append(f"{path}: {len(problems) - MAX_REPORTED} more bad lines like these.")
        raise InvalidInput("\n".join(shown))
    if not conversations:
        raise InvalidInput(f"--data {str(path)!r} holds no conversation; write one per line, "
                           f"like {EXAMPLE}.")
    return ChatDataset(Path(path), tuple(conversations), hashlib.sha256(raw).hexdigest())


def _conversation(line: bytes) -> tuple[tuple[dict[str, str], ...], str]:
    """The line's messages, or why the line is bad and its fix (one clause, no full stop)."""
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError:
        return (), "is not UTF-8 text; save the file as UTF-8"
    try:
        record = json.loads(text)
    except json.JSONDecodeError as exc:
        return (), f"is not valid JSON ({exc.msg} at column {exc.colno}); write one JSON object per line"
    if not isinstance(record, dict) or "messages" not in record:
        return (), f'has no "messages" field; write each line like {EXAMPLE}'
    messages = record["messages"]
    if not isinstance(messages, list) or not messages:
        return (), f'"messages" is {_shown(messages)}, not a non-empty list; give a list of messages'
    checked: list[dict[str, str]] = []
    for index, message in enumerate(messages):
        where = f"messages[{index}]"
        if not isinstance(message, dict):
            return (), f'{where} is {_shown(message)}; give an object with "role" and "content"'
        role, content = message.get("role"), message.get("content")
        if role not in ROLES:
            return (), f'{where}.role is {_shown(role)}; use one of: {", ".join(ROLES)}'
        if not isinstance(content, str) or not content.strip():
            return (), f'{where}.content is {_shown(content)}; give the message text as a non-empty string'
        checked.append({"role": role, "content": content})
    if not any(m["role"] == "assistant" for m in checked):
        return (), 'has no "assistant" message; add the answer the adapter should learn'
    return tuple(checked), ""


def _shown(value: Any) -> str:
    text = json.dumps(value, ensure_ascii=False) if value is not None else "missing"
    return text if len(text) <= 40 else text[:37] + "..."
