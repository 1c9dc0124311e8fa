"""The monitoring component's settings: Prometheus' node and every metrics endpoint it scrapes."""

from __future__ import annotations

from typing import Any

from podium.bundle.artifact_urls import mirror_form
from podium.monitoring.targets import EngineEndpoint, GatewayEndpoint, targets_from_components
from podium.stack.model import Stack
from podium.stack.ports import ALERTMANAGER_PORT, replicas

Settings = dict[str, Any]


def host_engines(stack: Stack, kind: str) -> list[Any]:
    on_cluster = set(stack.kubernetes.engines) if stack.kubernetes else set()
    return [e for e in stack.engines if e.kind == kind and e.name not in on_cluster]


def monitoring_settings(stack: Stack, host: str) -> Settings:
    mon = stack.monitoring
    assert mon is not None
    server = host == mon.node
    return {
        "server": server,
        "server_address": str(stack.node(mon.node).address),
        **mon.model_dump(),
        "alertmanager_port": ALERTMANAGER_PORT,
        "stack": stack.name,
        # GPU nodes also run the DCGM exporter, fetched from the stack's artifact mirror.
        "gpu": stack.node(host).gpus > 0,
        "artifact_mirror": stack.mirror_url,
        # A bundle keeps dcgm-exporter in its slot, a site's mirror at the file's own path.
        "mirror_form": mirror_form(stack),
        # Only Prometheus' node needs the targets: a node exporter is not reconfigured when
        # an engine moves.
        "targets": monitoring_targets(stack) if server else [],
    }


def monitoring_targets(stack: Stack) -> list[dict[str, Any]]:
    """Every metrics endpoint of the stack's hosts, as plain data for prometheus.yml."""
    mon = stack.monitoring
    assert mon is not None
    ip = {n.name: str(n.address) for n in stack.nodes}
    engines = [
        EngineEndpoint(
            f"engine-{engine.kind}",
            rep.node,
            ip[rep.node],
            # MLServer serves metrics on a port of its own; the others on their API port.
            rep.metrics_port if rep.metrics_port is not None else rep.port,
            engine.name,
            stack.model(engine.model).name,
            str(rep.index),
        )
        for kind in ("llamacpp", "predictive", "vllm", "sglang")
        for engine in host_engines(stack, kind)
        for rep in replicas(engine)
    ]
    gw = stack.gateway
    gateways = []
    if gw is not None:
        gateways = [GatewayEndpoint(n, ip[n], gw.scrape_port, str(i)) for i, n in enumerate(gw.nodes)]
    reg = stack.registry
    targets = targets_from_components(
        ip,
        gpu_nodes=[n.name for n in stack.nodes if n.gpus > 0],
        engines=engines,
        gateways=gateways,
        registry=(reg.node, ip[reg.node]) if reg else None,
        prometheus=(mon.node, ip[mon.node]),
        # The registry's debug listener (metrics) is the port after its API port.
        registry_port=reg.port + 1 if reg else 5001,
        prometheus_port=mon.port,
    )
    out = []
    for t in targets:
        # A TLS gateway serves its metrics listener over HTTPS too.
        scheme = "https" if t.job == "gateway" and gw is not None and gw.tls else t.scheme
        out.append(
            {
                "job": t.job,
                "host": t.host,
                "address": t.address,
                "labels": dict(t.labels),
                "scheme": scheme,
                "metrics_path": t.metrics_path,
            }
        )
    return out
