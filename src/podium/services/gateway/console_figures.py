"""The console's overview figures: engine replicas as this gateway routes them, and request rate,
TTFT and TPOT p95 from Prometheus when the stack has it, else from this gateway's own metrics."""

from __future__ import annotations

import asyncio
import math
import time
from collections import defaultdict
from collections.abc import Mapping
from typing import Any

from podium.errors import PodiumError
from podium.services.gateway.runtime import Gateway
from podium.services.gateway.usage import report_op

# One minute of requests, as Prometheus' rate() over [1m] would count them.
RATE_WINDOW_S = 60.0
PROM_QPS = "sum by (model) (rate(podium_gateway_requests_total[1m]))"
PROM_P95 = "histogram_quantile(0.95, sum by (model, le) (rate({metric}_bucket[5m])))"
PROM_NODES = 'up{job="node"}'
PROM_ALERTS = 'ALERTS{alertstate="firing"}'


def replicas(gw: Gateway) -> list[dict[str, Any]]:
    """Every engine replica behind every model, as the routing function sees it now."""
    return [
        {"model": name, "replica": r.url, "up": r.healthy and not r.drained, "healthy": r.healthy,
         "drained": r.drained, "in_flight": r.outstanding}
        for name, rs in sorted(gw.models.items()) for r in rs.replicas.values()
    ]


def bucket_quantile(q: float, buckets: list[tuple[float, float]]) -> float | None:
    """Prometheus' histogram_quantile over cumulative (upper bound, count) pairs, +Inf last:
    linear within the bucket the rank falls in; the highest finite bound past it."""
    if not buckets or buckets[-1][1] <= 0:
        return None
    rank = q * buckets[-1][1]
    lower_bound, lower_count = 0.0, 0.0
    for bound, count in buckets:
        if count >= rank:
            if math.isinf(bound):
                return lower_bound
            share = (rank - lower_count) / (count - lower_count) if count > lower_count else 1.0
            return lower_bound + (bound - lower_bound) * share
        lower_bound, lower_count = bound, count
    return lower_bound


def histogram_p95(histogram: Any) -> dict[str, float | None]:
    """p95 per model of one of the gateway's histograms, over everything since it started."""
    per_model: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for metric in histogram.collect():
        for sample in metric.samples:
            if sample.name.endswith("_bucket"):
                per_model[sample.labels["model"]].append((float(sample.labels["le"]), sample.value))
    return {m: bucket_quantile(0.95, sorted(b)) for m, b in sorted(per_model.items())}


async def own_figures(gw: Gateway) -> dict[str, Any]:
    now = time.time()
    lines = await gw.store.run(report_op(now - RATE_WINDOW_S, None, ["model"]))
    rps = {line.model: line.requests / RATE_WINDOW_S for line in lines}
    return _per_model(gw, rps, histogram_p95(gw.metrics.ttft), histogram_p95(gw.metrics.tpot),
                      "this gateway: requests per second over the last minute from the usage"
                      " store (every gateway on it); TTFT and TPOT p95 since this gateway started")


def _prometheus(url: str) -> dict[str, Any]:
    from podium.monitoring.query import PrometheusClient

    client = PrometheusClient(url, timeout=2.0)  # a page waits on it

    def by_model(expr: str) -> dict[str, float | None]:
        return {s.labels.get("model", ""): s.value for s in client.query(expr)
                if not math.isnan(s.value)}

    return {
        "rps": by_model(PROM_QPS),
        "ttft": by_model(PROM_P95.format(metric="podium_gateway_ttft_seconds")),
        "tpot": by_model(PROM_P95.format(metric="podium_gateway_tpot_seconds")),
        "nodes": sorted(({"node": s.labels.get("node", s.labels.get("instance", "?")),
                          "up": s.value == 1} for s in client.query(PROM_NODES)),
                        key=lambda n: str(n["node"])),
        "alerts": sorted(({"alert": s.labels.get("alertname", "?"),
                           "severity": s.labels.get("severity", ""),
                           "where": s.labels.get("node") or s.labels.get("model") or ""}
                          for s in client.query(PROM_ALERTS)), key=lambda a: str(a["alert"])),
    }


async def figures(gw: Gateway) -> dict[str, Any]:
    """Per model: requests per second, TTFT and TPOT p95 (seconds), and where they came from."""
    console = gw.config.console
    url = console.prometheus_url if console else None
    if url:
        try:
            found = await asyncio.to_thread(_prometheus, url)
            return {**_per_model(gw, found["rps"], found["ttft"], found["tpot"],
                                 f"Prometheus at {url}: every gateway, rates over 1 minute,"
                                 " p95 over 5"),
                    "nodes": found["nodes"], "alerts": found["alerts"]}
        except PodiumError as exc:
            found = await own_figures(gw)
            found["source"] = f"{exc}; shown instead: {found['source']}"
            return found
    return await own_figures(gw)


def _per_model(gw: Gateway, rps: Mapping[str, float | None], ttft: Mapping[str, float | None],
               tpot: Mapping[str, float | None], source: str) -> dict[str, Any]:
    models = [
        {"model": name, "requests_per_s": round(rps.get(name) or 0.0, 3),
         "ttft_p95_s": _round(ttft.get(name)), "tpot_p95_s": _round(tpot.get(name))}
        for name in sorted(gw.models)
    ]
    # Nodes and alerts are Prometheus' to know; None says it was not asked.
    return {"source": source, "models": models, "nodes": None, "alerts": None}


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 4)
