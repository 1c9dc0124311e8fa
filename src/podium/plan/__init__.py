"""The plan: a pure function from a stack and recorded state to ordered actions."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from podium.plan.actions import Action, make_plan
    from podium.plan.components import BY_NAME, COMPONENT_NAMES, COMPONENTS, Component
    from podium.plan.state import HostState

__all__ = ["BY_NAME", "COMPONENTS", "COMPONENT_NAMES", "Action", "Component", "HostState", "make_plan"]

# Imported when first asked for, not with the package: the gateway's console reads release
# records (podium.plan.state) on nodes that lack what the planner itself imports.
_FROM = {"Action": "actions", "make_plan": "actions", "BY_NAME": "components", "COMPONENT_NAMES": "components",
         "COMPONENTS": "components", "Component": "components", "HostState": "state"}


def __getattr__(name: str) -> Any:
    if name in _FROM:
        return getattr(importlib.import_module(f"{__name__}.{_FROM[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
