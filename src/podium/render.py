"""Render a component's templates for one host: the exact files its role writes there."""

from __future__ import annotations

import os
from collections.abc import Mapping
from functools import cache
from pathlib import Path
from typing import Any

import jinja2

REPO = Path(__file__).resolve().parents[2]


def templates_dir() -> Path:
    return Path(os.environ.get("PODIUM_TEMPLATES_DIR", REPO / "templates"))


@cache
def environment(root: Path) -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(root)),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
        autoescape=False,
    )


def render_template(name: str, **context: Any) -> str:
    """Render `templates/<name>` (e.g. `base/nftables.conf.j2`)."""
    return environment(templates_dir()).get_template(name).render(**context)


def component_templates(role: str) -> list[str]:
    """The templates a role's folder holds, relative to templates/, in a stable order."""
    folder = templates_dir() / role
    if not folder.is_dir():
        return []
    return sorted(str(p.relative_to(templates_dir())) for p in folder.rglob("*.j2") if p.is_file())


def render_component(role: str, host: str, settings: Mapping[str, Any], skip: str | None = None) -> dict[str, str]:
    """Every template of the role, rendered with its host settings; keys drop the `.j2`.

    skip: a prefix (e.g. "keepalived/") of templates the host does not get.
    """
    out = {}
    for name in component_templates(role):
        relative = name.removeprefix(f"{role}/").removesuffix(".j2")
        if skip is not None and relative.startswith(skip):
            continue
        out[relative] = render_template(name, host=host, settings=settings, s=settings)
    return out
