"""Files the monitoring role writes on a host, keyed by their path on the host without the
leading slash, built from the host's monitoring settings alone."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from podium.errors import InvalidInput
from podium.monitoring import template_env
from podium.monitoring.dashboards import (
    DASHBOARDS,
    dashboards_dir,
    render_grafana_provisioning,
)
from podium.monitoring.rules import AlertThresholds, render_alert_rules, render_alertmanager_config
from podium.monitoring.scrape import check_duration, render_prometheus_config
from podium.monitoring.targets import DCGM_EXPORTER_PORT, NODE_EXPORTER_PORT, ScrapeTarget
from podium.secrets import StackSecrets
from podium.stack.types import FROM_BUNDLE

PROMETHEUS_CONFIG = "etc/prometheus/prometheus.yml"
ALERT_RULES = "etc/prometheus/podium-alerts.yml"
ALERTMANAGER_CONFIG = "etc/prometheus/alertmanager.yml"
PROMETHEUS_DEFAULTS = "etc/default/prometheus"
ALERTMANAGER_DEFAULTS = "etc/default/prometheus-alertmanager"
NODE_EXPORTER_DEFAULTS = "etc/default/prometheus-node-exporter"
DCGM_UNIT = "etc/systemd/system/podium-dcgm-exporter.service"
DCGM_COUNTERS = "etc/podium/dcgm-exporter/counters.csv"
DCGM_BINARY = "/usr/local/bin/dcgm-exporter"
# The exporter reads the GPUs through the DCGM host engine (nvidia-dcgm, port 5555 on the node),
# so it needs no device access and runs as this user.
DCGM_USER = "podium-dcgm-exporter"
DCGM_HOSTENGINE = "localhost:5555"
GRAFANA_SOURCE = "etc/apt/sources.list.d/podium-grafana.list"
GRAFANA_KEYRING = "/etc/apt/keyrings/podium-grafana.asc"
GRAFANA_DROPIN = "etc/systemd/system/grafana-server.service.d/podium.conf"
GRAFANA_PROVISIONING = "etc/grafana/provisioning"
GRAFANA_DASHBOARDS = "var/lib/grafana/dashboards/podium"
GRAFANA_PORT = 3000
# Grafana's settings that would call out, all off: usage reports, update and plugin-update
# checks, the news feed, gravatar images, feedback links. No plugin is fetched at runtime:
# Podium's dashboards use only plugins built into Grafana (the Prometheus data source; time
# series, stat, table and row panels), so nothing is preinstalled (Grafana 12 preinstalls and
# updates plugins from grafana.com by default), the catalog cannot install one, and plugin
# signatures are checked with the keys Grafana ships. Snapshots are never published outside.
GRAFANA_QUIET = {
    "GF_ANALYTICS_REPORTING_ENABLED": "false",
    "GF_ANALYTICS_CHECK_FOR_UPDATES": "false",
    "GF_ANALYTICS_CHECK_FOR_PLUGIN_UPDATES": "false",
    "GF_ANALYTICS_FEEDBACK_LINKS_ENABLED": "false",
    "GF_NEWS_NEWS_FEED_ENABLED": "false",
    "GF_SECURITY_DISABLE_GRAVATAR": "true",
    "GF_PLUGINS_PREINSTALL_DISABLED": "true",
    "GF_PLUGINS_PREINSTALL_AUTO_UPDATE": "false",
    "GF_PLUGINS_PLUGIN_ADMIN_ENABLED": "false",
    "GF_PLUGINS_PUBLIC_KEY_RETRIEVAL_DISABLED": "true",
    "GF_SNAPSHOTS_EXTERNAL_ENABLED": "false",
}
# The admin password, from the stack's secrets on the control machine (secret GRAFANA_SECRET).
GRAFANA_PASSWORD_FILE = "/etc/grafana/podium-admin-password"
# Where a bundle stack keeps the Grafana .deb it installed from the bundle's slot.
GRAFANA_DEB_DIR = "/var/cache/podium/grafana"
GRAFANA_SECRET = "grafana-admin"
# Debian's bundle of trusted CAs: Podium's CA joins it on every node, and Prometheus re-reads
# the file when it changes, so a CA added after Prometheus started is still used.
CA_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"

_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, "y": 31536000}
_PART = re.compile(r"(\d+)(ms|s|m|h|d|w|y)")


def seconds(name: str, value: str) -> float:
    """A Prometheus duration (30s, 1h30m) in seconds; InvalidInput names `name` otherwise."""
    check_duration(name, value)
    return sum(int(n) * _UNITS[unit] for n, unit in _PART.findall(value))


def _duration(total: float) -> str:
    return f"{int(total)}s"


def thresholds(settings: Mapping[str, Any]) -> AlertThresholds:
    """The alert thresholds a stack's `monitoring:` section asks for.

    Every `for:` wait is the stack's alert_for; rate() windows span at least four scrapes.
    """
    window = max(300.0, 4 * seconds("monitoring.scrape_interval", settings["scrape_interval"]))
    return AlertThresholds(
        ttft_slo_seconds=float(settings["ttft_slo_seconds"]), rate_window=_duration(window)
    ).with_for(settings["alert_for"])


def scrape_targets(settings: Mapping[str, Any]) -> list[ScrapeTarget]:
    """The settings' target dicts (see plan.components) as ScrapeTargets."""
    return [
        ScrapeTarget(
            t["job"],
            t["host"],
            t["address"],
            dict(t["labels"]),
            scheme=t["scheme"],
            metrics_path=t["metrics_path"],
        )
        for t in settings["targets"]
    ]


def prometheus_url(settings: Mapping[str, Any]) -> str:
    """Where Prometheus answers: the monitoring node's address and the stack's port."""
    return f"http://{settings['server_address']}:{settings['port']}"


def grafana_source(repository: str) -> tuple[str, str]:
    """(URL, "suite component...") of `monitoring.grafana_repository`.

    repository: a URL ("https://mirror.example/grafana", suite "stable main" assumed) or an
    apt source without `deb` ("https://mirror.example/grafana stable main").
    """
    url, _, suite = repository.strip().partition(" ")
    if not url.startswith(("http://", "https://")):
        raise InvalidInput(
            f"monitoring.grafana_repository {repository!r} does not start with an http(s) URL; "
            "write it like https://mirror.example.internal/grafana stable main"
        )
    return url.rstrip("/"), suite.strip() or "stable main"


def grafana_admin_password(stack: str) -> str:
    """Grafana's admin password: the stack's secret, made once and kept 0600 on the control
    machine; never part of the settings or of a rendered file."""
    return StackSecrets(stack).token(GRAFANA_SECRET)


def build(host: str, settings: Mapping[str, Any]) -> dict[str, str]:
    """Relative path → content of every file the monitoring role writes on `host`.

    host: the node's name (unused beyond the settings, which already name it).
    settings: that host's monitoring settings from podium.plan.components.

    Example: build("ctrl", action.settings)["etc/prometheus/prometheus.yml"]
    """
    env = template_env()
    files = {
        NODE_EXPORTER_DEFAULTS: env.get_template("role/node-exporter.default.j2").render(
            port=NODE_EXPORTER_PORT
        )
    }
    if settings["gpu"]:
        files[DCGM_UNIT] = env.get_template("role/dcgm-exporter.service.j2").render(
            binary=DCGM_BINARY, port=DCGM_EXPORTER_PORT, counters=f"/{DCGM_COUNTERS}",
            user=DCGM_USER, hostengine=DCGM_HOSTENGINE,
        )
        files[DCGM_COUNTERS] = env.get_template("role/dcgm-counters.csv.j2").render()
    if settings["server"]:
        files.update(_server_files(settings))
    return files


def _server_files(settings: Mapping[str, Any]) -> dict[str, str]:
    env = template_env()
    interval = settings["scrape_interval"]
    alert_for = seconds("monitoring.alert_for", settings["alert_for"])
    targets = scrape_targets(settings)
    files = {
        PROMETHEUS_CONFIG: render_prometheus_config(
            targets,
            scrape_interval=interval,
            evaluation_interval=interval,
            # Relative to prometheus.yml, so promtool checks a rendered copy anywhere.
            rule_files=[ALERT_RULES.rsplit("/", 1)[1]],
            alertmanager=f"{settings['server_address']}:{settings['alertmanager_port']}",
            ca_file=CA_BUNDLE if any(t.scheme == "https" for t in targets) else None,
            external_labels={"appliance": settings["stack"]},
        ),
        ALERT_RULES: render_alert_rules(thresholds(settings)),
        # A short alert_for (the lab's) asks for quick news: group no longer than it waited.
        ALERTMANAGER_CONFIG: render_alertmanager_config(
            settings["webhook"], group_wait=_duration(min(30.0, alert_for))
        ),
        PROMETHEUS_DEFAULTS: env.get_template("role/prometheus.default.j2").render(
            config_file=f"/{PROMETHEUS_CONFIG}",
            retention=settings["retention"],
            port=settings["port"],
        ),
        ALERTMANAGER_DEFAULTS: env.get_template("role/alertmanager.default.j2").render(
            config_file=f"/{ALERTMANAGER_CONFIG}", port=settings["alertmanager_port"]
        ),
    }
    if settings["grafana_repository"]:
        files.update(_grafana_files(settings))
    return files


def _grafana_files(settings: Mapping[str, Any]) -> dict[str, str]:
    env = template_env()
    provisioning = render_grafana_provisioning(
        prometheus_url(settings),
        dashboards_path=f"/{GRAFANA_DASHBOARDS}",
        scrape_interval=settings["scrape_interval"],
    )
    files = {
        GRAFANA_DROPIN: env.get_template("role/grafana-server.conf.j2").render(
            port=GRAFANA_PORT, password_file=GRAFANA_PASSWORD_FILE, quiet=GRAFANA_QUIET
        ),
    }
    if settings["grafana_repository"] != FROM_BUNDLE:
        # From the bundle, Grafana is one .deb from its slot: no repository to read.
        url, suite = grafana_source(settings["grafana_repository"])
        files[GRAFANA_SOURCE] = env.get_template("role/grafana.list.j2").render(
            keyring=GRAFANA_KEYRING, url=url, suite=suite
        )
    files.update({f"{GRAFANA_PROVISIONING}/{k}": v for k, v in provisioning.items()})
    for name in DASHBOARDS:
        path = dashboards_dir() / f"{name}.json"
        files[f"{GRAFANA_DASHBOARDS}/{name}.json"] = path.read_text(encoding="utf-8")
    return files
