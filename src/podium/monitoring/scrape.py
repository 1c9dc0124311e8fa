"""Render Prometheus' own configuration (prometheus.yml) from a list of scrape targets."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from podium.errors import InvalidInput
from podium.monitoring import template_env
from podium.monitoring.targets import _ADDRESS, _LABEL_NAME, JOBS, ScrapeTarget

_DURATION = re.compile(r"^(\d+y)?(\d+w)?(\d+d)?(\d+h)?(\d+m)?(\d+s)?(\d+ms)?$")


def check_duration(name: str, value: str) -> str:
    """Return `value` if it is a Prometheus duration like 30s or 1h30m, else raise InvalidInput."""
    if not value or not _DURATION.match(value):
        raise InvalidInput(
            f"{name} {value!r} is not a Prometheus duration; write it like 30s, 5m or 1h30m"
        )
    return value


@dataclass
class _Job:
    name: str
    scheme: str
    metrics_path: str
    targets: list[ScrapeTarget] = field(default_factory=list)


def _jobs(targets: Iterable[ScrapeTarget]) -> list[_Job]:
    jobs: dict[str, _Job] = {}
    seen: set[tuple[str, str]] = set()
    for t in targets:
        job = jobs.setdefault(t.job, _Job(t.job, t.scheme, t.metrics_path))
        # One scrape_config per job carries a single scheme and path.
        if (job.scheme, job.metrics_path) != (t.scheme, t.metrics_path):
            raise InvalidInput(
                f"job {t.job} mixes {job.scheme}://…{job.metrics_path} and "
                f"{t.scheme}://…{t.metrics_path} (target {t.address}); "
                "give every target of one job the same scheme and metrics_path"
            )
        if (t.job, t.address) in seen:
            raise InvalidInput(
                f"job {t.job} lists address {t.address} twice; each endpoint is scraped once"
            )
        seen.add((t.job, t.address))
        job.targets.append(t)
    # Stable order: the order of JOBS, so re-rendering an unchanged stack is a no-op.
    return [jobs[name] for name in JOBS if name in jobs]


def render_prometheus_config(
    targets: Sequence[ScrapeTarget],
    *,
    scrape_interval: str = "15s",
    evaluation_interval: str = "15s",
    rule_files: Sequence[str] = (),
    alertmanager: str | None = None,
    ca_file: str | None = None,
    external_labels: Mapping[str, str] | None = None,
) -> str:
    """prometheus.yml text: one scrape_config per job, each target's labels kept.

    targets: the endpoints to scrape (see podium.monitoring.targets).
    scrape_interval, evaluation_interval: Prometheus durations, e.g. "15s".
    rule_files: paths of alert rule files as Prometheus will see them on its host.
    alertmanager: "HOST:PORT" of Alertmanager, or None for no alerting section.
    ca_file: CA bundle path used to verify https targets.
    external_labels: labels added to every series sent out (e.g. {"appliance": "lab"}).

    Example: render_prometheus_config([ScrapeTarget("node", "n1", "10.77.0.11:9100")])
    """
    check_duration("scrape_interval", scrape_interval)
    check_duration("evaluation_interval", evaluation_interval)
    if alertmanager is not None and not _ADDRESS.match(alertmanager):
        raise InvalidInput(
            f"alertmanager {alertmanager!r} is not HOST:PORT; write it like 10.77.0.10:9093"
        )
    for name in external_labels or {}:
        if not _LABEL_NAME.match(name):
            raise InvalidInput(
                f"external label {name!r} is not a Prometheus label name; use letters, digits and _"
            )
    template = template_env().get_template("prometheus.yml.j2")
    return template.render(
        jobs=_jobs(targets),
        scrape_interval=scrape_interval,
        evaluation_interval=evaluation_interval,
        rule_files=list(rule_files),
        alertmanager=alertmanager,
        ca_file=ca_file,
        external_labels=dict(external_labels or {}),
    )
