"""The gateway's Prometheus metrics, in a registry of its own (one per gateway app)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client import values as metric_values
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

_LATENCY = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
_TTFT = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30)
_PER_TOKEN = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.08, 0.15, 0.3, 0.6, 1.2, 2.5)


class Budgets(Collector):
    """Each budget and its spend as the store held them at the last scrape.

    A collector rather than two gauges: budgets come and go, and they are the store's
    figures, not a worker's, so with several workers they are not summed over them.
    """

    def __init__(self) -> None:
        self.spends: list[Any] = []

    def collect(self) -> Iterator[Metric]:
        budget = GaugeMetricFamily(
            "podium_gateway_budget",
            "Budget of a key or team per period (day or month), in the prices' currency.",
            labels=["owner", "name", "period"])
        spent = GaugeMetricFamily(
            "podium_gateway_budget_spent",
            "What admission counts against a budget in its current window (settled spend plus"
            " reservations in flight), read from the store at each scrape.",
            labels=["owner", "name", "period"])
        for s in self.spends:
            budget.add_metric([s.kind, s.name, s.period], s.budget)
            spent.add_metric([s.kind, s.name, s.period], s.spent)
        yield budget
        yield spent


def share_between_workers() -> None:
    """Keep every metric made from now on in files of this process under the folder named by
    PROMETHEUS_MULTIPROC_DIR, which `GatewayMetrics(shared=...)` sums on /metrics.

    Called in each worker before its metrics are made (prometheus_client reads the variable
    only when it is first imported, which the parent has already done)."""
    metric_values.ValueClass = metric_values.MultiProcessValue()  # type: ignore[no-untyped-call]


class GatewayMetrics:
    """Requests, latencies, tokens and replica health, exposed on /metrics.

    `shared`: the folder of several workers' metrics files (see `share_between_workers`);
    /metrics then sums every worker's counts, and gauges by what each means.
    """

    def __init__(self, shared: Path | None = None) -> None:
        self.shared = shared
        self.registry = CollectorRegistry(auto_describe=True)
        self._children: dict[tuple[int, tuple[str, ...]], Any] = {}
        r = self.registry
        self.requests = Counter(
            "podium_gateway_requests",
            "Requests answered, by model, key name and HTTP status.",
            ["model", "key", "status"],
            registry=r,
        )
        self.latency = Histogram(
            "podium_gateway_request_duration_seconds",
            "Time from request to last byte, by model.",
            ["model"],
            buckets=_LATENCY,
            registry=r,
        )
        self.ttft = Histogram(
            "podium_gateway_ttft_seconds",
            "Time from request to the first streamed token, by model.",
            ["model"],
            buckets=_TTFT,
            registry=r,
        )
        self.tpot = Histogram(
            "podium_gateway_tpot_seconds",
            "Mean time per output token after the first, per streamed request, by model.",
            ["model"],
            buckets=_PER_TOKEN,
            registry=r,
        )
        self.itl = Histogram(
            "podium_gateway_itl_seconds",
            "Time between two streamed chunks carrying tokens, by model.",
            ["model"],
            buckets=_PER_TOKEN,
            registry=r,
        )
        self.tokens = Counter(
            "podium_gateway_tokens",
            "Tokens as the engines reported them, by model, key name and kind"
            " (prompt or completion).",
            ["model", "key", "kind"],
            registry=r,
        )
        self.in_flight = Gauge(
            "podium_gateway_in_flight_requests", "Requests being served now.", registry=r,
            multiprocess_mode="livesum",
        )
        self.upstream_requests = Counter(
            "podium_gateway_upstream_requests",
            "Requests sent to each engine replica, by model, replica and outcome.",
            ["model", "replica", "outcome"],
            registry=r,
        )
        self.replica_healthy = Gauge(
            "podium_gateway_upstream_healthy",
            "1 while a replica is in rotation, 0 while it is ejected.",
            ["model", "replica"],
            registry=r,
            # Each worker checks replicas itself: out of rotation as soon as one took it out.
            multiprocess_mode="livemin",
        )
        self.replica_outstanding = Gauge(
            "podium_gateway_upstream_outstanding_requests",
            "Requests a replica is serving now.",
            ["model", "replica"],
            registry=r,
            multiprocess_mode="livesum",
        )
        self.retries = Counter(
            "podium_gateway_upstream_retries",
            "Requests retried on another replica before their first byte.",
            ["model"],
            registry=r,
        )
        self.stream_errors = Counter(
            "podium_gateway_stream_errors",
            "Streams that broke after their first byte and ended with an error event.",
            ["model"],
            registry=r,
        )
        self.cost = Counter(
            "podium_gateway_cost",
            "Cost of the requests answered at the prices of the gateway config, by model, key"
            " name and the key's team ('' for none).",
            ["model", "key", "team"],
            registry=r,
        )
        self.budgets = Budgets()
        r.register(self.budgets)
        self.usage_write_failures = Counter(
            "podium_gateway_usage_write_failures",
            "Usage records the store refused (those responses were answered 503).",
            registry=r,
        )

    def child(self, metric: Any, *labels: str) -> Any:
        """metric.labels(*labels), remembered: the lookup is a hot path on every request."""
        found = self._children.get((id(metric), labels))
        if found is None:
            if len(self._children) > 100_000:  # keys come and go; bound the memo
                self._children.clear()
            found = self._children[(id(metric), labels)] = metric.labels(*labels)
        return found

    def set_budgets(self, spends: list[Any]) -> None:
        """The budgets as the store holds them now (budgets.Spend); ones gone are dropped."""
        self.budgets.spends = list(spends)

    def render(self) -> bytes:
        if self.shared is None:
            return generate_latest(self.registry)
        every = CollectorRegistry()
        MultiProcessCollector(every, path=str(self.shared))  # type: ignore[no-untyped-call]
        every.register(self.budgets)
        return generate_latest(every)
