"""A release: per host and component the version, config digest and model digests one run left,
with the digests of the stack and the effective version table it came from."""

from __future__ import annotations

import datetime as dt
import getpass
import json
import socket
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict

from podium.plan.state import HostState, canonical_sha256
from podium.stack.model import Stack
from podium.stack.versions import VersionTable

if TYPE_CHECKING:  # the planner (and through it the registry client) is not on gateway nodes
    from podium.plan.actions import Action

RELEASE_FORMAT = 1


class ComponentRelease(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    version: str
    config_hash: str
    # Manifest digests of the models this component's replicas serve (engines only).
    model_digests: list[str] = []


class Release(BaseModel):
    model_config = ConfigDict(extra="forbid")
    format: int = RELEASE_FORMAT
    number: int
    stack: str
    created_at: str
    # user@host of the control machine that ran it.
    by: str
    # "up", or "rollback to N".
    kind: str = "up"
    stack_digest: str
    versions_digest: str
    # Engine model reference (name:version or name:alias) → manifest digest it was served at.
    models: dict[str, str] = {}
    hosts: dict[str, dict[str, ComponentRelease]] = {}

    def same_content(self, other: Release | None) -> bool:
        """True when another release laid down exactly this (number, time and who aside)."""
        if other is None:
            return False
        keys = ("stack_digest", "versions_digest", "models", "hosts")
        return all(getattr(self, k) == getattr(other, k) for k in keys)

    def model_digests(self) -> set[str]:
        return {d for comps in self.hosts.values() for c in comps.values() for d in c.model_digests}

    def for_host(self, host: str) -> dict[str, Any]:
        """The small record a node keeps: this release, with its own components only."""
        data = self.model_dump(mode="json", exclude={"hosts"})
        data["host"] = host
        data["components"] = {k: v.model_dump() for k, v in self.hosts.get(host, {}).items()}
        return data

    def to_json(self) -> str:
        return json.dumps(self.model_dump(mode="json"), indent=2, sort_keys=True) + "\n"


def digest_of(data: Any) -> str:
    return "sha256:" + canonical_sha256(data)


def effective_table(table: VersionTable, stack: Stack) -> dict[str, Any]:
    """The version table as this stack runs it: the table with the stack's overrides pinned."""
    data: dict[str, Any] = table.for_stack(stack).model_dump(mode="json")
    return data


def who() -> str:
    return f"{getpass.getuser()}@{socket.gethostname()}"


def now() -> str:
    return dt.datetime.now(dt.UTC).replace(microsecond=0).isoformat()


def host_components(
    states: Mapping[str, HostState], actions: Sequence[Action]
) -> dict[str, dict[str, ComponentRelease]]:
    """What the recorded states say is laid down, with the model digests the plan served."""
    served: dict[tuple[str, str], list[str]] = {}
    for a in actions:
        if a.component.startswith("engine-") and a.action != "remove":
            # An adapter model's replica serves two: its base's weights and the adapter.
            digests = {d for r in a.settings.get("replicas", [])
                       for d in (r.get("model_digest"), (r.get("adapter") or {}).get("model_digest"))}
            served[(a.host, a.component)] = sorted(d for d in digests if d)
    return {
        host: {
            name: ComponentRelease(
                version=c.version, config_hash=c.config_hash, model_digests=served.get((host, name), [])
            )
            for name, c in sorted(state.components.items())
        }
        for host, state in sorted(states.items())
        if state.components
    }


def make_release(
    number: int,
    stack: Stack,
    table: VersionTable,
    states: Mapping[str, HostState],
    actions: Sequence[Action],
    models: Mapping[str, str] | None = None,
    kind: str = "up",
) -> Release:
    """The release a run that ended with `states` laid down (not yet written anywhere)."""
    return Release(
        number=number,
        stack=stack.name,
        created_at=now(),
        by=who(),
        kind=kind,
        stack_digest=digest_of(stack.model_dump(mode="json")),
        versions_digest=digest_of(effective_table(table, stack)),
        models=dict(sorted((models or {}).items())),
        hosts=host_components(states, actions),
    )
