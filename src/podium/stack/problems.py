"""A broken rule of a stack: the field path it is about, the value found there and what is wrong."""

from __future__ import annotations

from dataclasses import dataclass

FieldPath = tuple[str | int, ...]


@dataclass(frozen=True)
class Problem:
    path: FieldPath
    value: object
    message: str
