"""Read a stack file into a `Stack`, turning every problem into `file:line: path = value: why`."""

from __future__ import annotations

import os
import types
import typing
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from podium.bundle.manifest import MANIFEST, MARKER
from podium.errors import InvalidInput
from podium.stack.model import RENAMED_KEYS, Stack
from podium.stack.problems import Problem
from podium.stack.reading import StackError, read_yaml
from podium.stack.rules import check

MAX_SHOWN = 12

__all__ = ["StackError", "dotted", "load_stack", "resolve_path"]


def resolve_path(stack: str | Path) -> Path:
    """STACK on the command line is a stack folder or its stack.yaml."""
    path = Path(stack)
    if path.is_dir():
        path = path / "stack.yaml"
    if not path.is_file():
        if os.path.lexists(path):
            raise InvalidInput(
                f"stack {path}: is not a regular file (a folder, FIFO, device or a symbolic link "
                "that leads nowhere); give a stack.yaml file or the folder holding it"
            )
        raise InvalidInput(
            f"stack {stack}: no such stack file; give a folder holding stack.yaml or the file itself"
        )
    return path


def load_stack(stack: str | Path, components: frozenset[str] | None = None) -> Stack:
    """Load and check a stack; never touches a host."""
    from podium.plan.components import COMPONENT_NAMES

    path = resolve_path(stack)
    root, data = read_yaml(path)
    if not isinstance(data, dict):
        raise StackError(f"{path}:1: a stack is a mapping of sections (name, nodes, engines, ...)")
    lines = _Lines(root)
    try:
        result = Stack.model_validate(data)
    except ValidationError as exc:
        raise StackError(_format(path, lines, _pydantic_problems(exc, data))) from None
    problems = check(result, components or frozenset(COMPONENT_NAMES))
    if problems:
        raise StackError(_format(path, lines, problems))
    result._folder = path.parent.resolve()
    result._file = path.resolve()
    _check_bundle(result, path, lines)
    return result


def _check_bundle(stack: Stack, path: Path, lines: _Lines) -> None:
    """A declared bundle may be built later (`podium lab up` builds it), but a path that holds
    something else is refused before anything ships it."""
    folder = stack.bundle_folder
    if folder is None or not folder.exists():
        return
    if folder.is_dir() and ((folder / MANIFEST).is_file() or (folder / MARKER).exists() or not any(folder.iterdir())):
        return
    given = stack.mirror_bundle.bundle if stack.mirror_bundle else ""
    problem = Problem(
        ("artifact_mirror", "bundle"),
        given,
        f"is {folder}, which is not a bundle folder; give the folder `podium bundle {path.parent} --out` wrote",
    )
    raise StackError(_format(path, lines, [problem]))


class _Lines:
    """Finds the line of a field path in the YAML tree; the deepest existing part when it is missing."""

    def __init__(self, root: yaml.Node | None) -> None:
        self.root = root

    def line(self, path: tuple[str | int, ...]) -> int:
        node = self.root
        line = node.start_mark.line + 1 if node else 1
        for part in path:
            if isinstance(node, yaml.MappingNode) and isinstance(part, str):
                found = [(k, v) for k, v in node.value if getattr(k, "value", None) == part]
                if not found:
                    break
                line = found[0][0].start_mark.line + 1
                node = found[0][1]
            elif isinstance(node, yaml.SequenceNode) and isinstance(part, int):
                if part >= len(node.value):
                    break
                node = node.value[part]
                line = node.start_mark.line + 1
            else:
                break
        return line


def _format(path: Path, lines: _Lines, problems: list[Problem]) -> str:
    shown = [
        f"{path}:{lines.line(p.path)}: {dotted(p.path)}{_value(p.value)}: {p.message}"
        for p in problems[:MAX_SHOWN]
    ]
    if len(problems) > MAX_SHOWN:
        shown.append(f"... and {len(problems) - MAX_SHOWN} more problems")
    return "\n".join(shown)


def dotted(path: tuple[str | int, ...]) -> str:
    out = ""
    for part in path:
        # A key with blanks or control characters is shown quoted, so it stays on its line.
        word = str(part) if str(part).isprintable() and " " not in str(part) else repr(part)
        out += f"[{part}]" if isinstance(part, int) else (f".{word}" if out else word)
    return out or "(top level)"


def _value(value: object) -> str:
    if value is None:
        return ""
    text = repr(value)
    return f" = {text[:60]}{'...' if len(text) > 60 else ''}"


def _pydantic_problems(exc: ValidationError, data: dict[str, Any]) -> list[Problem]:
    seen: set[tuple[str | int, ...]] = set()
    out = []
    for error in exc.errors():
        path = _data_path(error["loc"], data)
        if path in seen:
            continue  # a union reports once per member; the first is enough
        seen.add(path)
        out.append(Problem(path, _value_at(data, path), _message(error, path)))
    # A renamed key explains the other errors it causes (the new key is then "required").
    out.sort(key=lambda p: not p.message.startswith("`"))
    return out


def _data_path(loc: tuple[str | int, ...], data: Any) -> tuple[str | int, ...]:
    """Drop the union member names pydantic adds, keeping only parts that exist in the data."""
    out: list[str | int] = []
    node = data
    for index, part in enumerate(loc):
        is_last = index == len(loc) - 1
        if isinstance(node, dict) and isinstance(part, str) and (part in node or is_last):
            out.append(part)
            node = node.get(part)
        elif isinstance(node, list) and isinstance(part, int) and part < len(node):
            out.append(part)
            node = node[part]
    return tuple(out)


def _value_at(data: Any, path: tuple[str | int, ...]) -> object:
    node = data
    for part in path:
        if isinstance(node, dict):
            node = node.get(part)
        elif isinstance(node, list) and isinstance(part, int):
            node = node[part]
    return node


def _message(error: Any, path: tuple[str | int, ...]) -> str:
    kind = error["type"]
    if kind == "extra_forbidden":
        renamed = _renamed(path)
        if renamed:
            return renamed
        allowed = _allowed_keys(path[:-1])
        return f"is not a known key; allowed here: {', '.join(allowed)}" if allowed else "is not a known key"
    if kind == "missing":
        return "is required"
    # A validator's own sentence arrives as "Value error, <sentence>": the sentence is enough.
    message: str = error["msg"].removeprefix("Value error, ")
    return message[0].lower() + message[1:]


def _renamed(path: tuple[str | int, ...]) -> str | None:
    for pattern, note in RENAMED_KEYS.items():
        if len(pattern) == len(path) and all(p in ("*", q) for p, q in zip(pattern, path, strict=True)):
            return note
    return None


def _allowed_keys(path: tuple[str | int, ...]) -> list[str]:
    """The field names of the model that sits at `path`, walking the Stack's type annotations."""
    model: Any = Stack
    for part in path:
        if isinstance(part, int):
            continue
        fields = getattr(model, "model_fields", None)
        if not fields or part not in fields:
            return []
        model = _model_of(fields[part].annotation)
    fields = getattr(model, "model_fields", None)
    return list(fields) if fields else []


def _model_of(annotation: Any) -> Any:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    origin = typing.get_origin(annotation)
    if origin in (list, dict, typing.Union, types.UnionType, typing.Annotated):
        for arg in typing.get_args(annotation):
            found = _model_of(arg)
            if found is not None:
                return found
    return None
