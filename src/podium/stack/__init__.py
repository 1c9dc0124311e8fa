"""The stack: one file declaring an appliance, loaded into pydantic models and checked."""

from podium.stack.loader import StackError, load_stack, resolve_path
from podium.stack.model import Stack

__all__ = ["Stack", "StackError", "load_stack", "resolve_path"]
