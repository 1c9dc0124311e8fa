"""Ask Prometheus how the appliance is doing: nodes, engine replicas, gateway replicas."""

from __future__ import annotations

import json
import math
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from podium.errors import InvalidInput, PodiumError
from podium.monitoring.scrape import check_duration
from podium.monitoring.targets import ENGINE_JOBS

# Tried in order for each (model, replica); the first that has a value wins. Every expression
# must keep the `model` and `replica` labels; `{w}` is the rate window.
REPLICA_QPS = (
    # Per-replica counters kept by the gateway, if it exports them.
    "sum by (model, replica) (rate(podium_gateway_upstream_requests_total[{w}]))",
    # vLLM's own counter; `model` and `replica` come from Podium's scrape target labels.
    # prometheus_client's OpenMetrics output spells `vllm:x` as `vllm_x`, so match both.
    'sum by (model, replica) (rate({{__name__=~"vllm[:_]request_success_total"}}[{w}]))',
)
REPLICA_TTFT_P95 = (
    "histogram_quantile(0.95, sum by (model, replica, le) "
    "(rate(podium_gateway_upstream_ttft_seconds_bucket[{w}])))",
    "histogram_quantile(0.95, sum by (model, replica, le) "
    '(rate({{__name__=~"vllm[:_]time_to_first_token_seconds_bucket"}}[{w}])))',
)
# Where no per-replica figure exists, the model's figure at the gateway is shown instead.
MODEL_QPS = "sum by (model) (rate(podium_gateway_requests_total[{w}]))"
MODEL_TTFT_P95 = (
    "histogram_quantile(0.95, sum by (model, le) (rate(podium_gateway_ttft_seconds_bucket[{w}])))"
)
GATEWAY_QPS = "sum by (node, gateway_replica) (rate(podium_gateway_requests_total[{w}]))"
GATEWAY_TTFT_P95 = (
    "histogram_quantile(0.95, sum by (node, gateway_replica, le) "
    "(rate(podium_gateway_ttft_seconds_bucket[{w}])))"
)
UPSTREAM_HEALTHY = "max by (model, replica) (podium_gateway_upstream_healthy)"


@dataclass(frozen=True)
class Sample:
    """One series of an instant vector: its labels and its value."""

    labels: dict[str, str]
    value: float


class PrometheusClient:
    """A small client for Prometheus' HTTP API (instant queries only).

    Example: PrometheusClient("http://127.0.0.1:9090").query('up{job="node"}')
    """

    def __init__(self, url: str, *, timeout: float = 5.0) -> None:
        parsed = urllib.parse.urlsplit(url)
        if parsed.scheme not in ("http", "https") or not parsed.netloc:
            raise InvalidInput(
                f"Prometheus URL {url!r} is not an http(s) address; "
                "write it like http://10.77.0.10:9090"
            )
        self.url = url.rstrip("/")
        self.timeout = timeout

    def query(self, expr: str) -> list[Sample]:
        """The instant vector `expr` gives now; a scalar comes back as one unlabelled sample."""
        body = urllib.parse.urlencode({"query": expr}).encode()
        request = urllib.request.Request(f"{self.url}/api/v1/query", data=body, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                payload = json.load(response)
        except urllib.error.HTTPError as exc:
            # Prometheus answers bad queries with 400 and a JSON body naming the error.
            try:
                reason = json.load(exc).get("error", exc.reason)
            except (ValueError, AttributeError):
                reason = exc.reason
            raise PodiumError(
                f"Prometheus at {self.url} rejected query {expr!r}: {reason}"
            ) from exc
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise PodiumError(
                f"cannot reach Prometheus at {self.url} ({reason}); "
                "check that it runs and that the address is right"
            ) from exc
        except ValueError as exc:
            raise PodiumError(f"{self.url} did not answer like Prometheus (not JSON)") from exc
        if payload.get("status") != "success":
            raise PodiumError(
                f"Prometheus at {self.url} failed query {expr!r}: {payload.get('error')}"
            )
        return _samples(payload["data"])


def _samples(data: Mapping[str, Any]) -> list[Sample]:
    if data["resultType"] == "vector":
        return [Sample(dict(r["metric"]), float(r["value"][1])) for r in data["result"]]
    if data["resultType"] == "scalar":
        return [Sample({}, float(data["result"][1]))]
    raise PodiumError(f"expected an instant vector from Prometheus, got {data['resultType']}")


@dataclass(frozen=True)
class TargetStatus:
    """A scraped endpoint other than an engine or gateway: node, registry, DCGM, Prometheus."""

    job: str
    node: str
    instance: str
    up: bool


@dataclass(frozen=True)
class EngineReplicaStatus:
    """One engine replica; `figures_from` says whether qps/ttft are the replica's or its model's."""

    job: str
    node: str
    instance: str
    engine: str
    model: str
    replica: str
    up: bool
    healthy_at_gateway: bool | None
    qps: float | None
    ttft_p95_seconds: float | None
    figures_from: str


@dataclass(frozen=True)
class GatewayReplicaStatus:
    """One gateway replica with the traffic it served."""

    node: str
    instance: str
    replica: str
    up: bool
    qps: float | None
    ttft_p95_seconds: float | None


@dataclass(frozen=True)
class ApplianceStatus:
    """What `podium status` shows, as data."""

    prometheus: str
    nodes: list[TargetStatus] = field(default_factory=list)
    engines: list[EngineReplicaStatus] = field(default_factory=list)
    gateways: list[GatewayReplicaStatus] = field(default_factory=list)
    others: list[TargetStatus] = field(default_factory=list)

    def to_dict(self, versions: Mapping[str, Mapping[str, str]] | None = None) -> dict[str, Any]:
        """JSON-ready form; `versions` is host → component → version as recorded at apply."""
        data = asdict(self)
        data["versions"] = {h: dict(c) for h, c in (versions or {}).items()}
        return data


def _number(value: float) -> float | None:
    # histogram_quantile and 0/0 give NaN when there was no traffic in the window.
    return None if math.isnan(value) or math.isinf(value) else value


def _by(samples: Iterable[Sample], *names: str) -> dict[tuple[str, ...], float | None]:
    return {tuple(s.labels.get(n, "") for n in names): _number(s.value) for s in samples}


def _first_of(
    client: PrometheusClient, exprs: Iterable[str], window: str
) -> dict[tuple[str, ...], float | None]:
    found: dict[tuple[str, ...], float | None] = {}
    for expr in exprs:
        for key, value in _by(client.query(expr.format(w=window)), "model", "replica").items():
            if found.get(key) is None:
                found[key] = value
    return found


def collect_status(client: PrometheusClient, *, window: str = "2m") -> ApplianceStatus:
    """Query Prometheus once for everything `podium status` shows.

    client: a PrometheusClient for the appliance's Prometheus.
    window: rate window for QPS and TTFT; at least 4 scrape intervals.

    Example: collect_status(PrometheusClient("http://127.0.0.1:9090"), window="1m")
    """
    check_duration("window", window)
    ups = client.query("up")
    replica_qps = _first_of(client, REPLICA_QPS, window)
    replica_ttft = _first_of(client, REPLICA_TTFT_P95, window)
    model_qps = _by(client.query(MODEL_QPS.format(w=window)), "model")
    model_ttft = _by(client.query(MODEL_TTFT_P95.format(w=window)), "model")
    gateway_qps = _by(client.query(GATEWAY_QPS.format(w=window)), "node", "gateway_replica")
    gateway_ttft = _by(client.query(GATEWAY_TTFT_P95.format(w=window)), "node", "gateway_replica")
    healthy = _by(client.query(UPSTREAM_HEALTHY), "model", "replica")

    status = ApplianceStatus(prometheus=client.url)
    order = ("job", "node", "model", "replica", "gateway_replica", "instance")
    for s in sorted(ups, key=lambda s: tuple(s.labels.get(name, "") for name in order)):
        job, labels, up = s.labels.get("job", ""), s.labels, s.value == 1
        node, instance = labels.get("node", ""), labels.get("instance", "")
        if job == "node":
            status.nodes.append(TargetStatus(job, node, instance, up))
        elif job in ENGINE_JOBS:
            key = (labels.get("model", ""), labels.get("replica", ""))
            qps, ttft, source = replica_qps.get(key), replica_ttft.get(key), "replica"
            if qps is None and ttft is None:
                qps, ttft = model_qps.get(key[:1]), model_ttft.get(key[:1])
                source = "model" if qps is not None or ttft is not None else "none"
            state = healthy.get(key)
            status.engines.append(
                EngineReplicaStatus(
                    job,
                    node,
                    instance,
                    labels.get("engine", ""),
                    key[0],
                    key[1],
                    up,
                    None if state is None else state == 1,
                    qps,
                    ttft,
                    source,
                )
            )
        elif job == "gateway":
            key = (node, labels.get("gateway_replica", ""))
            status.gateways.append(
                GatewayReplicaStatus(
                    node, instance, key[1], up, gateway_qps.get(key), gateway_ttft.get(key)
                )
            )
        else:
            status.others.append(TargetStatus(job, node, instance, up))
    return status
