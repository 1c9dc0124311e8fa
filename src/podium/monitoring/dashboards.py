"""Grafana's side: the dashboard JSON files, their provisioning, and their PromQL made checkable."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from podium.errors import InvalidInput, PodiumError
from podium.monitoring import template_env, templates_dir
from podium.monitoring.scrape import check_duration

DASHBOARDS = ("podium-overview", "podium-models", "podium-keys")
DATASOURCE_UID = "podium-prometheus"
DATASOURCE_NAME = "Podium Prometheus"

# Values for Grafana's built-in variables when an expression is evaluated outside Grafana.
GRAFANA_BUILTINS = {
    "__rate_interval": "1m",
    "__interval": "30s",
    "__interval_ms": "30000",
    "__range": "1h",
    "__range_s": "3600",
    "__range_ms": "3600000",
}

# $name, ${name}, ${name:format} and the older [[name]].
_VARIABLE = re.compile(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)|\[\[(\w+)\]\]")


def dashboards_dir() -> Path:
    """The folder of the dashboard JSON files that Grafana's provisioning points at."""
    return templates_dir() / "monitoring" / "dashboards"


def load_dashboard(name: str) -> dict[str, Any]:
    """One dashboard's JSON model, by file name without `.json` (see DASHBOARDS)."""
    if name not in DASHBOARDS:
        raise InvalidInput(f"dashboard {name!r} is unknown; use one of {', '.join(DASHBOARDS)}")
    path = dashboards_dir() / f"{name}.json"
    try:
        data: dict[str, Any] = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise PodiumError(f"cannot read dashboard {path}: {exc}") from exc
    return data


def panels(dashboard: Mapping[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel, including those folded inside collapsed rows."""
    for panel in dashboard.get("panels", []):
        yield panel
        yield from panel.get("panels", [])


def panel_expressions(dashboard: Mapping[str, Any]) -> list[tuple[str, str]]:
    """(panel title, PromQL) for every query target of every panel."""
    return [
        (panel.get("title", ""), target["expr"])
        for panel in panels(dashboard)
        for target in panel.get("targets", [])
        if target.get("expr")
    ]


def substitute_variables(expr: str, values: Mapping[str, str]) -> str:
    """`expr` with Grafana variables replaced, so Prometheus itself can evaluate it.

    values: sample values for the dashboard's own variables (model, key, node); Grafana's
    built-ins ($__rate_interval, $__range, ...) come from GRAFANA_BUILTINS unless given.

    Example: substitute_variables('rate(x{model=~"$model"}[$__rate_interval])',
                                  {"model": "tiny-llama"})
    """
    known = {**GRAFANA_BUILTINS, **values}

    def replace(match: re.Match[str]) -> str:
        name = next(g for g in match.groups() if g)
        if name not in known:
            raise InvalidInput(
                f"dashboard variable ${name} in {expr!r} has no sample value; "
                f"give one of: {', '.join(sorted(known))}"
            )
        return known[name]

    return _VARIABLE.sub(replace, expr)


def render_grafana_provisioning(
    prometheus_url: str,
    *,
    dashboards_path: str = "/var/lib/grafana/dashboards/podium",
    folder: str = "Podium",
    scrape_interval: str = "15s",
    ca_pem: str | None = None,
) -> dict[str, str]:
    """Grafana provisioning files, as relative path → text, for /etc/grafana/provisioning.

    prometheus_url: where Grafana reaches Prometheus, e.g. http://10.77.0.10:9090.
    dashboards_path: the folder on the Grafana host where the dashboard JSON files are copied.
    folder: the Grafana folder the dashboards appear in.
    scrape_interval: Prometheus' scrape interval, so $__rate_interval is never too short.
    ca_pem: PEM text of the CA that signed Prometheus' certificate, for an https URL.

    Example: render_grafana_provisioning("http://10.77.0.10:9090")["datasources/podium.yml"]
    """
    if not prometheus_url.startswith(("http://", "https://")):
        raise InvalidInput(
            f"prometheus_url {prometheus_url!r} is not an http(s) address; "
            "write it like http://10.77.0.10:9090"
        )
    if not dashboards_path.startswith("/"):
        raise InvalidInput(f"dashboards_path {dashboards_path!r} must be an absolute path")
    check_duration("scrape_interval", scrape_interval)
    env = template_env()
    return {
        "datasources/podium.yml": env.get_template("grafana/datasource.yml.j2").render(
            name=DATASOURCE_NAME,
            uid=DATASOURCE_UID,
            prometheus_url=prometheus_url,
            scrape_interval=scrape_interval,
            ca_pem=ca_pem,
        ),
        "dashboards/podium.yml": env.get_template("grafana/dashboards.yml.j2").render(
            dashboards_path=dashboards_path, folder=folder
        ),
    }
