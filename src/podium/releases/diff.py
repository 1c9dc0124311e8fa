"""What changed between two releases, per host and component: version, config, model digests."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from podium.releases.record import ComponentRelease, Release


@dataclass(frozen=True)
class Change:
    host: str
    component: str
    # "version", "config", "models", "added" or "removed".
    what: str
    before: str
    after: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def release_changes(a: Release, b: Release) -> list[Change]:
    """Changes from release a to release b, hosts and components in name order."""
    out: list[Change] = []
    for host in sorted(set(a.hosts) | set(b.hosts)):
        before, after = a.hosts.get(host, {}), b.hosts.get(host, {})
        for name in sorted(set(before) | set(after)):
            out += component_changes(host, name, before.get(name), after.get(name))
    return out


def component_changes(
    host: str, name: str, before: ComponentRelease | None, after: ComponentRelease | None
) -> list[Change]:
    if before is None and after is not None:
        return [Change(host, name, "added", "-", after.version)]
    if after is None and before is not None:
        return [Change(host, name, "removed", before.version, "-")]
    assert before is not None and after is not None
    out = []
    if before.version != after.version:
        out.append(Change(host, name, "version", before.version, after.version))
    if before.config_hash != after.config_hash:
        out.append(Change(host, name, "config", before.config_hash, after.config_hash))
    if before.model_digests != after.model_digests:
        out.append(Change(host, name, "models", _short(before.model_digests), _short(after.model_digests)))
    return out


def changed_components(a: Release | None, b: Release) -> dict[str, list[str]]:
    """host → components that differ from release a (all of b's when there is no a)."""
    if a is None:
        return {h: sorted(c) for h, c in b.hosts.items()}
    out: dict[str, list[str]] = {}
    for change in release_changes(a, b):
        names = out.setdefault(change.host, [])
        if change.component not in names:
            names.append(change.component)
    return out


def _short(digests: list[str]) -> str:
    # sha256: and twelve hex digits tell digests apart and keep a row within 80 columns.
    return ", ".join(d.removeprefix("sha256:")[:12] for d in digests) or "-"
