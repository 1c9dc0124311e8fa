"""The plan: a pure function from a stack and recorded state to ordered actions."""

from podium.plan.actions import Action, make_plan
from podium.plan.components import BY_NAME, COMPONENT_NAMES, COMPONENTS, Component
from podium.plan.state import HostState

__all__ = ["BY_NAME", "COMPONENTS", "COMPONENT_NAMES", "Action", "Component", "HostState", "make_plan"]
