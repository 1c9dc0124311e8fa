"""Monitoring of the appliance: scrape targets, Prometheus config, alerts, dashboards, status."""

from __future__ import annotations

import os
from pathlib import Path

import jinja2

__all__ = ["templates_dir", "template_env"]


def templates_dir() -> Path:
    """The folder holding `monitoring/`: $PODIUM_TEMPLATES_DIR, else the repo's `templates/`."""
    override = os.environ.get("PODIUM_TEMPLATES_DIR")
    if override:
        return Path(override)
    # src/podium/monitoring/__init__.py: the repo root is three folders above this package.
    return Path(__file__).resolve().parents[3] / "templates"


def template_env(*, angle_brackets: bool = False) -> jinja2.Environment:
    """A jinja2 environment over templates/monitoring that fails on any undefined name.

    angle_brackets: substitute `<< name >>` instead of `{{ name }}`, for templates whose
    output itself holds Prometheus' `{{ $labels.x }}` templating (the alert rules).
    """
    return jinja2.Environment(
        variable_start_string="<<" if angle_brackets else "{{",
        variable_end_string=">>" if angle_brackets else "}}",
        loader=jinja2.FileSystemLoader(str(templates_dir() / "monitoring")),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
        autoescape=False,
    )
