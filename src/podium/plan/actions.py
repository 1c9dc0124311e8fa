"""Turn (stack, version table, recorded state) into the ordered list of actions to run."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any, Literal

from packaging.version import InvalidVersion, Version

from podium.plan.components import COMPONENTS, Component
from podium.plan.state import HostState, config_hash
from podium.stack.model import Stack
from podium.stack.versions import VersionTable

ActionKind = Literal["install", "upgrade", "downgrade", "reconfigure", "remove", "keep"]


@dataclass(frozen=True)
class Action:
    host: str
    component: str
    action: ActionKind
    from_version: str | None
    to_version: str | None
    config_hash: str | None
    # The role's settings on this host; what `podium up` hands the role as host data.
    settings: Mapping[str, Any]

    def to_dict(self, with_settings: bool = False) -> dict[str, Any]:
        out = asdict(self)
        if not with_settings:
            del out["settings"]
        return out


def make_plan(
    stack: Stack,
    versions: VersionTable,
    state: Mapping[str, HostState] | None = None,
    digests: Mapping[str, str] | None = None,
) -> list[Action]:
    """Components in dependency order, hosts in stack order; removals last, in reverse order,
    so replacements are running before what they replace goes away. `digests` maps engine
    model references (name:version or name:alias) to the registry digest they resolve to."""
    state = state or {}
    out: list[Action] = []
    desired: set[tuple[str, str]] = set()
    for component in _in_order(stack):
        version = versions.version(component.name, stack)
        for host in component.hosts(stack):
            desired.add((host, component.name))
            settings = component.settings(stack, host)
            if digests is not None and component.name.startswith("engine-"):
                # The digest a model reference resolves to is part of the engine's config, so a
                # moved alias or a re-pushed version shows up as a change.
                for replica in settings["replicas"]:
                    replica["model_digest"] = digests.get(replica["model_ref"])
                    if "adapter" in replica:
                        replica["adapter"] = {**replica["adapter"],
                                              "model_digest": digests.get(replica["adapter"]["model_ref"])}
            digest = config_hash({"version": version, "settings": settings})
            recorded = state.get(host)
            before = recorded.components.get(component.name) if recorded else None
            kind = _kind(before.version if before else None, version, before, digest)
            out.append(
                Action(
                    host, component.name, kind, before.version if before else None, version, digest, settings
                )
            )
    removals = []
    order = {c.name: i for i, c in enumerate(COMPONENTS)}
    for host, recorded in state.items():
        for name, comp in recorded.components.items():
            if (host, name) not in desired:
                removals.append(Action(host, name, "remove", comp.version, None, None, {}))
    removals.sort(key=lambda a: (-order.get(a.component, -1), a.host))
    return out + removals


def _in_order(stack: Stack) -> list[Component]:
    # COMPONENTS is declared in dependency order; check it so a new component cannot break it.
    seen: set[str] = set()
    for component in COMPONENTS:
        missing = [d for d in component.after if d not in seen]
        assert not missing, f"{component.name} is declared before {missing}"
        seen.add(component.name)
    return list(COMPONENTS)


def _kind(before: str | None, after: str, recorded: Any, digest: str) -> ActionKind:
    if before is None:
        return "install"
    order = compare_versions(before, after)
    if order < 0:
        return "upgrade"
    if order > 0:
        return "downgrade"
    return "keep" if recorded.config_hash == digest else "reconfigure"


def compare_versions(a: str, b: str) -> int:
    """-1, 0 or 1; PEP 440 when both parse, else a Debian-like natural order."""
    try:
        va, vb = Version(a), Version(b)
        return (va > vb) - (va < vb)
    except InvalidVersion:
        ka, kb = _natural(a), _natural(b)
        return (ka > kb) - (ka < kb)


def _natural(version: str) -> list[tuple[int, int | str]]:
    return [(0, int(p)) if p.isdigit() else (1, p) for p in re.findall(r"\d+|[A-Za-z]+", version)]
