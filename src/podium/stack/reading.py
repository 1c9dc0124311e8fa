"""Read a stack file's YAML into plain data, bounded so that a hostile file (huge, deeply nested,
aliases that expand without end, not a file at all) ends in one sentence, fast."""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any

import yaml

from podium.errors import InvalidInput

# Stack files are a few kilobytes, nest a handful of levels and hold a few thousand values.
MAX_BYTES = 512 << 10
MAX_DEPTH = 64
MAX_VALUES = 50_000
# libyaml parses about ten times faster than PyYAML's pure-Python reader.
_LOADER: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_PLAIN_TAGS = {"tag:yaml.org,2002:map", "tag:yaml.org,2002:seq"}


class StackError(InvalidInput):
    """A stack that does not load; the message holds one line per problem."""


def read_yaml(path: Path) -> tuple[yaml.Node | None, Any]:
    """The YAML tree (for line numbers) and the plain data of the stack file at `path`."""
    text = read_text(path)
    try:
        _check_shape(text, path)
        root = yaml.compose(text, Loader=_LOADER)
        return root, _Builder(path).build(root, 0)
    except yaml.reader.ReaderError as exc:
        line = text[: exc.position].count("\n") + 1
        character = exc.character if isinstance(exc.character, str) else chr(exc.character)
        raise StackError(
            f"{path}:{line}: not valid YAML: character {character!r} is not allowed in a YAML file; remove it"
        ) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark else 1
        problem = " ".join(str(getattr(exc, "problem", None) or exc).split())
        raise StackError(f"{path}:{line}: not valid YAML: {problem}") from None


def read_text(path: Path) -> str:
    """The file's text, refusing what is not a small regular UTF-8 file before reading it all."""
    try:
        # O_NONBLOCK: a FIFO put in place after the caller looked must not hang the open.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except OSError as exc:
        raise StackError(f"{path}: cannot be opened ({exc.strerror}); give a readable stack.yaml") from None
    with os.fdopen(fd, "rb") as file:
        info = os.fstat(file.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise StackError(f"{path}: is not a regular file; give a stack.yaml file")
        if info.st_size > MAX_BYTES:
            raise StackError(
                f"{path}: is {info.st_size} bytes, more than a stack file's limit of {MAX_BYTES}; "
                "give the stack's own stack.yaml"
            )
        try:
            data = file.read(MAX_BYTES + 1)
        except OSError as exc:
            raise StackError(f"{path}: cannot be read ({exc.strerror}); give a readable stack.yaml") from None
    if len(data) > MAX_BYTES:
        raise StackError(f"{path}: grew past a stack file's limit of {MAX_BYTES} bytes while being read")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise StackError(
            f"{path}:{line}: is not UTF-8 text (byte 0x{data[exc.start]:02x} at offset {exc.start}); "
            "save the file as UTF-8"
        ) from None


def _check_shape(text: str, path: Path) -> None:
    """Refuse deep nesting and too many values from the parser's events, which keep no stack,
    before the composer recurses into them."""
    depth = values = 0
    for event in yaml.parse(text, Loader=_LOADER):
        line = event.start_mark.line + 1 if event.start_mark else 1
        if isinstance(event, yaml.CollectionStartEvent):
            depth += 1
            if depth > MAX_DEPTH:
                raise StackError(f"{path}:{line}: nests more than {MAX_DEPTH} levels deep; a stack needs a handful")
        elif isinstance(event, yaml.CollectionEndEvent):
            depth -= 1
        elif isinstance(event, yaml.ScalarEvent | yaml.AliasEvent):
            values += 1
            if values > MAX_VALUES:
                raise StackError(f"{path}:{line}: holds more than {MAX_VALUES} values; a stack needs far fewer")


class _Builder:
    """Plain data from the YAML tree, refusing duplicate keys that PyYAML would drop silently and
    aliases that repeat a value without bound (each use of an alias counts again) or hold
    themselves."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.count = 0
        self.scalars = _LOADER("")

    def _refuse(self, node: yaml.Node, message: str) -> StackError:
        return StackError(f"{self.path}:{node.start_mark.line + 1}: {message}")

    def build(self, node: yaml.Node | None, depth: int) -> Any:
        if node is None:
            return None
        self.count += 1
        if depth > MAX_DEPTH:
            raise self._refuse(
                node,
                f"nests more than {MAX_DEPTH} levels deep through aliases (an alias inside its own "
                "anchor?); write the stack out without them",
            )
        if self.count > MAX_VALUES:
            raise self._refuse(
                node,
                f"expands to more than {MAX_VALUES} values (aliases repeating aliases?); "
                "write the stack out without them",
            )
        if isinstance(node, yaml.CollectionNode) and node.tag not in _PLAIN_TAGS:
            # SafeLoader would refuse these; building collections by hand must refuse them too.
            raise self._refuse(node, f"YAML tag {node.tag!r} is not allowed; remove it")
        if isinstance(node, yaml.MappingNode):
            out: dict[Any, Any] = {}
            for key_node, value_node in node.value:
                key = self.build(key_node, depth + 1)
                if not isinstance(key, str | int | float | bool | type(None)):
                    raise self._refuse(key_node, f"a key must be a plain word, not a {type(key).__name__}")
                if key in out:
                    raise self._refuse(key_node, f"key {key!r} appears twice in one mapping; keep one")
                out[key] = self.build(value_node, depth + 1)
            return out
        if isinstance(node, yaml.SequenceNode):
            return [self.build(item, depth + 1) for item in node.value]
        try:
            return self.scalars.construct_object(node)
        except (ValueError, OverflowError) as exc:
            # PyYAML's resolver passes dates like 2026-02-30 and 5,000-digit integers to Python,
            # which refuses them with these.
            kind = node.tag.rsplit(":", 1)[-1]
            raise self._refuse(
                node, f"{node.value[:40]!r} is not a valid {kind} ({str(exc)[:80]}); quote it to make it a string"
            ) from None
