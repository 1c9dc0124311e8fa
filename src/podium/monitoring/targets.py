"""What Prometheus scrapes: one `ScrapeTarget` per metrics endpoint, built from plain host data."""

from __future__ import annotations

import re
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field

from podium.errors import InvalidInput

NODE_EXPORTER_PORT = 9100
DCGM_EXPORTER_PORT = 9400
PROMETHEUS_PORT = 9090
# docker-registry serves `http.debug.prometheus` on its debug listener, not on :5000.
REGISTRY_DEBUG_PORT = 5001
# MLServer exposes metrics on a port of its own, not on the inference port.
MLSERVER_METRICS_PORT = 8082

ENGINE_JOBS = ("engine-llamacpp", "engine-predictive", "engine-vllm", "engine-sglang")
JOBS = ("node", *ENGINE_JOBS, "gateway", "registry", "dcgm", "prometheus")

_LABEL_NAME = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")
_ADDRESS = re.compile(r"^(\[[0-9a-fA-F:]+\]|[A-Za-z0-9._-]+):([0-9]{1,5})$")


@dataclass(frozen=True)
class ScrapeTarget:
    """One metrics endpoint; `host` becomes the `node` label, `labels` are kept as given.

    Example: ScrapeTarget("engine-llamacpp", "node1", "10.77.0.11:8080",
                          {"engine": "tiny-llama-cpp", "model": "tiny-llama", "replica": "0"})
    """

    job: str
    host: str
    address: str
    labels: dict[str, str] = field(default_factory=dict)
    scheme: str = "http"
    metrics_path: str = "/metrics"

    def __post_init__(self) -> None:
        if self.job not in JOBS:
            raise InvalidInput(
                f"scrape target job {self.job!r} is unknown; use one of {', '.join(JOBS)}"
            )
        if not self.host:
            raise InvalidInput(
                f"scrape target for job {self.job!r} has an empty host; name its node"
            )
        match = _ADDRESS.match(self.address)
        if match is None or not 0 < int(match.group(2)) < 65536:
            raise InvalidInput(
                f"scrape target address {self.address!r} (job {self.job}) is not HOST:PORT; "
                "write it like 10.77.0.11:9100"
            )
        if self.scheme not in ("http", "https"):
            raise InvalidInput(
                f"scrape target scheme {self.scheme!r} (job {self.job}) is not allowed; "
                "use http or https"
            )
        if not self.metrics_path.startswith("/"):
            raise InvalidInput(
                f"scrape target metrics_path {self.metrics_path!r} (job {self.job}) "
                "must start with /"
            )
        for name in self.labels:
            # `node` is set from host; `__`-names are Prometheus' own and would be dropped.
            if not _LABEL_NAME.match(name) or name.startswith("__") or name in ("node", "job"):
                raise InvalidInput(
                    f"scrape target label {name!r} (job {self.job}, host {self.host}) is not "
                    "allowed; use letters, digits and _, not starting with __, and not node or job"
                )

    def all_labels(self) -> dict[str, str]:
        """The labels Prometheus attaches to every series of this target."""
        return {"node": self.host, **dict(sorted(self.labels.items()))}


@dataclass(frozen=True)
class EngineEndpoint:
    """One engine replica's metrics endpoint (for MLServer its metrics port, default 8082)."""

    job: str
    host: str
    ip: str
    port: int
    engine: str
    model: str
    replica: str


@dataclass(frozen=True)
class GatewayEndpoint:
    """One gateway replica's metrics endpoint."""

    host: str
    ip: str
    port: int
    replica: str


def _address(ip: str, port: int) -> str:
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"


def targets_from_components(
    nodes: Mapping[str, str],
    *,
    gpu_nodes: Collection[str] = (),
    engines: Iterable[EngineEndpoint] = (),
    gateways: Iterable[GatewayEndpoint] = (),
    registry: tuple[str, str] | None = None,
    prometheus: tuple[str, str] | None = None,
    registry_port: int = REGISTRY_DEBUG_PORT,
    prometheus_port: int = PROMETHEUS_PORT,
) -> list[ScrapeTarget]:
    """All scrape targets of an appliance, from node name → IP and its endpoints.

    nodes: node name → IP; each gets a node exporter target on :9100.
    gpu_nodes: names of nodes that also run the DCGM exporter on :9400.
    engines: one EngineEndpoint per engine replica.
    gateways: one GatewayEndpoint per gateway replica.
    registry: (node name, IP) of the registry node, scraped on its debug port.
    prometheus: (node name, IP) of the monitoring node, so Prometheus watches itself.

    Example: targets_from_components({"n1": "10.77.0.11"}, prometheus=("n1", "10.77.0.11"))
    """
    unknown = sorted(set(gpu_nodes) - set(nodes))
    if unknown:
        raise InvalidInput(
            f"gpu_nodes names {', '.join(unknown)} which are not among the nodes "
            f"({', '.join(sorted(nodes))}); list only declared nodes"
        )
    targets = [
        ScrapeTarget("node", name, _address(ip, NODE_EXPORTER_PORT)) for name, ip in nodes.items()
    ]
    targets += [
        ScrapeTarget("dcgm", name, _address(nodes[name], DCGM_EXPORTER_PORT))
        for name in sorted(gpu_nodes)
    ]
    for e in engines:
        if e.job not in ENGINE_JOBS:
            raise InvalidInput(
                f"engine endpoint job {e.job!r} is unknown; use one of {', '.join(ENGINE_JOBS)}"
            )
        labels = {"engine": e.engine, "model": e.model, "replica": e.replica}
        targets.append(ScrapeTarget(e.job, e.host, _address(e.ip, e.port), labels))
    for g in gateways:
        targets.append(
            # Not `replica`: the gateway's own series carry `replica` naming engine replicas,
            # and a target label of the same name would overwrite it.
            ScrapeTarget("gateway", g.host, _address(g.ip, g.port), {"gateway_replica": g.replica})
        )
    if registry is not None:
        targets.append(ScrapeTarget("registry", registry[0], _address(registry[1], registry_port)))
    if prometheus is not None:
        targets.append(
            ScrapeTarget("prometheus", prometheus[0], _address(prometheus[1], prometheus_port))
        )
    return targets
