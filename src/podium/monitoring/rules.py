"""Render Podium's Prometheus alert rules from the stack's thresholds."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from podium.errors import InvalidInput
from podium.monitoring import template_env
from podium.monitoring.scrape import check_duration

ALERTS = (
    "NodeDown",
    "DiskAlmostFull",
    "GPUXidErrors",
    "GPUMemoryNearFull",
    "EngineReplicaDown",
    "GatewayReplicaDown",
    "RegistryDown",
    "Gateway5xxRatioHigh",
    "TTFTp95AboveSLO",
    "EngineReplicaUnhealthyAtGateway",
)

_FOR_FIELDS = (
    "node_down_for",
    "replica_down_for",
    "gateway_5xx_for",
    "ttft_for",
    "disk_for",
    "gpu_memory_for",
)


@dataclass(frozen=True)
class AlertThresholds:
    """When each alert fires; ratios are fractions (0.85 = 85 %), durations Prometheus' (5m).

    Example: AlertThresholds(ttft_slo_seconds=1.5).with_for("30s")  # the lab's short waits
    """

    ttft_slo_seconds: float = 2.0
    gateway_5xx_ratio: float = 0.05
    disk_used_ratio: float = 0.85
    gpu_memory_used_ratio: float = 0.95
    node_down_for: str = "2m"
    replica_down_for: str = "2m"
    gateway_5xx_for: str = "5m"
    ttft_for: str = "5m"
    disk_for: str = "10m"
    gpu_memory_for: str = "10m"
    # The window of rate() in ratio and quantile alerts; at least 4 scrape intervals.
    rate_window: str = "5m"

    def __post_init__(self) -> None:
        for name in (*_FOR_FIELDS, "rate_window"):
            check_duration(name, getattr(self, name))
        if not self.ttft_slo_seconds > 0:
            raise InvalidInput(
                f"ttft_slo_seconds {self.ttft_slo_seconds!r} must be above 0; give seconds, e.g. 2"
            )
        for name in ("gateway_5xx_ratio", "disk_used_ratio", "gpu_memory_used_ratio"):
            value = getattr(self, name)
            if not 0 < value < 1:
                raise InvalidInput(
                    f"{name} {value!r} must be a fraction between 0 and 1, e.g. 0.85 for 85 %"
                )

    def with_for(self, duration: str) -> AlertThresholds:
        """The same thresholds with every `for:` wait set to `duration` (the lab uses 30s)."""
        waits: dict[str, Any] = {name: duration for name in _FOR_FIELDS}
        return dataclasses.replace(self, **waits)


def render_alert_rules(thresholds: AlertThresholds | None = None) -> str:
    """The rules file text (podium-alerts.yml) for Prometheus' `rule_files`.

    thresholds: the stack's values; the defaults above when None.

    Example: render_alert_rules(AlertThresholds(ttft_slo_seconds=1.0))
    """
    env = template_env(angle_brackets=True)
    return env.get_template("podium-alerts.yml.j2").render(t=thresholds or AlertThresholds())


def render_alertmanager_config(
    webhook_url: str | None = None,
    *,
    group_wait: str = "30s",
    group_interval: str = "5m",
    repeat_interval: str = "4h",
) -> str:
    """alertmanager.yml text: one route, to a webhook when given, else to nowhere.

    webhook_url: http(s) URL that receives alerts as JSON (e.g. a chat bridge), or None.
    group_wait, group_interval, repeat_interval: Alertmanager durations.

    Example: render_alertmanager_config("http://10.77.0.10:9095/alerts")
    """
    for name, value in (
        ("group_wait", group_wait),
        ("group_interval", group_interval),
        ("repeat_interval", repeat_interval),
    ):
        check_duration(name, value)
    if webhook_url is not None and not webhook_url.startswith(("http://", "https://")):
        raise InvalidInput(
            f"webhook_url {webhook_url!r} is not an http(s) URL; "
            "write it like http://10.77.0.10:9095/alerts"
        )
    template = template_env().get_template("alertmanager.yml.j2")
    return template.render(
        webhook_url=webhook_url,
        group_wait=group_wait,
        group_interval=group_interval,
        repeat_interval=repeat_interval,
    )
