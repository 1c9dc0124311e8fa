"""In-cluster names for the services the host layer runs (registry, Prometheus): a Service
without a selector and an EndpointSlice pointing at the node that runs it."""

from __future__ import annotations

from podium.cluster.meta import Manifest, metadata
from podium.stack.model import Stack


def host_service(stack: Stack, component: str, name: str, node: str, port: int,
                 port_name: str) -> list[Manifest]:
    address = str(stack.node(node).address)
    return [
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": metadata(stack, component, component, name),
            "spec": {"type": "ClusterIP",
                     "ports": [{"name": port_name, "port": port, "targetPort": port,
                                "protocol": "TCP"}]},
        },
        {
            "apiVersion": "discovery.k8s.io/v1",
            "kind": "EndpointSlice",
            "metadata": {
                **metadata(stack, component, component, f"{name}-{node}"),
                "labels": {**metadata(stack, component, component, name)["labels"],
                           # Ties the slice to the Service: kube-proxy routes it by this label.
                           "kubernetes.io/service-name": name},
            },
            "addressType": "IPv4",
            "endpoints": [{"addresses": [address], "conditions": {"ready": True}}],
            "ports": [{"name": port_name, "port": port, "protocol": "TCP"}],
        },
    ]


def registry_objects(stack: Stack) -> list[Manifest]:
    if stack.registry is None:
        return []
    reg = stack.registry
    return host_service(stack, "registry", "podium-registry", reg.node, reg.port, "registry")


def monitoring_objects(stack: Stack) -> list[Manifest]:
    if stack.monitoring is None:
        return []
    mon = stack.monitoring
    return host_service(stack, "monitoring", "podium-prometheus", mon.node, mon.port,
                        "prometheus")
