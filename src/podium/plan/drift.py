"""Each node's current release and how what it recorded differs from what the stack plans now."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from podium.plan.actions import Action
from podium.plan.state import HostState

# What a plan action says about a component recorded on a node, as `podium status` marks it.
DRIFT = {
    "keep": "",
    "upgrade": "upgrade",
    "downgrade": "downgrade",
    "reconfigure": "config",
    "install": "not laid down",
    "remove": "not declared",
}


@dataclass(frozen=True)
class NodeRelease:
    """The release record a node keeps: its number, when and by whom (what status shows)."""

    number: int
    created_at: str = ""
    by: str = ""


@dataclass(frozen=True)
class ComponentDrift:
    component: str
    recorded: str | None
    planned: str | None
    # "" when the node has what the stack plans; else one of DRIFT's values.
    drift: str


@dataclass
class NodeDrift:
    host: str
    release: NodeRelease | None
    components: list[ComponentDrift] = field(default_factory=list)

    @property
    def drifted(self) -> list[ComponentDrift]:
        return [c for c in self.components if c.drift]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def parse_release(text: str) -> NodeRelease | None:
    """A node's release record, or None when it has none or it cannot be read as one: status
    then shows the recorded versions only."""
    try:
        data = json.loads(text)
        number = data["number"]
    except (json.JSONDecodeError, KeyError, TypeError):
        return None
    if not isinstance(number, int) or isinstance(number, bool):
        return None
    return NodeRelease(number, str(data.get("created_at") or ""), str(data.get("by") or ""))


def node_drift(
    states: Mapping[str, HostState],
    releases: Mapping[str, NodeRelease | None],
    actions: Sequence[Action],
    *,
    exact_engines: bool = True,
) -> list[NodeDrift]:
    """Per node, in plan order: each component recorded or planned there and its drift.

    exact_engines: False when the engines' model digests could not be read (no registry answer):
        their config cannot compare equal then, so only their versions are compared.
    """
    hosts = list(dict.fromkeys([a.host for a in actions] + sorted(states)))
    out = []
    for host in hosts:
        recorded = states.get(host, HostState(host=host)).components
        node = NodeDrift(host, releases.get(host))
        seen = set()
        for action in (a for a in actions if a.host == host):
            seen.add(action.component)
            kind = action.action
            if kind == "reconfigure" and not exact_engines and action.component.startswith("engine-"):
                kind = "keep"
            before = recorded.get(action.component)
            node.components.append(
                ComponentDrift(action.component, before.version if before else None, action.to_version,
                               DRIFT[kind])
            )
        for name in sorted(set(recorded) - seen):
            node.components.append(ComponentDrift(name, recorded[name].version, None, DRIFT["remove"]))
        out.append(node)
    return out
