"""The stack: one file declaring an appliance, loaded into pydantic models and checked."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from podium.stack.loader import StackError, load_stack, resolve_path
    from podium.stack.model import Stack

__all__ = ["Stack", "StackError", "load_stack", "resolve_path"]

# Imported when first asked for, not with the package: the gateway's console reads the stack's
# model from release records on nodes that lack what the loader (bundle checks) imports.
_FROM = {"StackError": "loader", "load_stack": "loader", "resolve_path": "loader", "Stack": "model"}


def __getattr__(name: str) -> Any:
    if name in _FROM:
        return getattr(importlib.import_module(f"{__name__}.{_FROM[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
