"""Which model versions a fine-tuned model's recorded lineage ties to a base model."""

from __future__ import annotations

from typing import TYPE_CHECKING

from podium.registry.ref import ModelRef

if TYPE_CHECKING:
    from podium.registry.client import Registry


def adapters_of(registry: Registry, digest: str) -> list[str]:
    """NAME:VERSION of every model version whose lineage names `digest` as its base.

    Read from each version's config, so an adapter counts once under its version and not
    again under its aliases.
    """
    found = []
    for t in registry.ls():
        config = registry.config(ModelRef(t.name, tag=t.tag))
        base = (config.get("lineage") or {}).get("base") or {}
        if base.get("digest") == digest and t.tag == config.get("version"):
            found.append(f"{t.name}:{t.tag}")
    return found
