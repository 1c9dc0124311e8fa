"""Which ports each component listens on, per node: one source for the firewall, the monitoring
targets and the check that no port is used twice."""

from __future__ import annotations

from dataclasses import dataclass

from podium.stack.model import Stack
from podium.stack.sections import Engine

NODE_EXPORTER_PORT = 9100
ALERTMANAGER_PORT = 9093
GRAFANA_PORT = 3000
POSTGRESQL_PORT = 5432


@dataclass(frozen=True)
class Replica:
    """One running copy of an engine: where it is and how it is reached."""

    engine: str
    kind: str
    index: int
    node: str
    port: int
    # MLServer answers gRPC and metrics on ports of their own.
    grpc_port: int | None = None
    metrics_port: int | None = None


@dataclass(frozen=True)
class Listener:
    node: str
    port: int
    component: str
    # Field path in the stack that put the port there, for error messages.
    path: tuple[str | int, ...]
    what: str
    # Who connects: anyone, the stack's nodes, gateway or monitoring nodes, or the control machine.
    audience: tuple[str, ...] = ("stack", "admin")


def replicas(engine: Engine) -> list[Replica]:
    """Replicas go round-robin over the engine's nodes; a node's second replica takes the next port."""
    out = []
    for index in range(engine.replicas):
        node = engine.nodes[index % len(engine.nodes)]
        slot = index // len(engine.nodes)
        if engine.kind == "predictive":
            base = engine.port + 3 * slot
            out.append(Replica(engine.name, engine.kind, index, node, base, base + 1, base + 2))
        else:
            out.append(Replica(engine.name, engine.kind, index, node, engine.port + slot))
    return out


def listeners(stack: Stack) -> list[Listener]:
    """Every port a component of the stack opens, in declaration order."""
    out: list[Listener] = []
    for i, node in enumerate(stack.nodes):
        out.append(Listener(node.name, node.ssh.port, "base", ("nodes", i, "ssh", "port"), "sshd", ("stack", "admin")))
    if stack.registry:
        reg = stack.registry
        out.append(Listener(reg.node, reg.port, "registry", ("registry", "port"), "registry", ("stack", "admin")))
        out.append(
            Listener(
                reg.node, reg.port + 1, "registry", ("registry", "port"), "registry metrics", ("monitoring",)
            )
        )
    for e, engine in enumerate(stack.engines):
        for rep in replicas(engine):
            path: tuple[str | int, ...] = ("engines", e, "port")
            what = f"engine {engine.name} replica {rep.index}"
            who = ("gateway", "monitoring")
            out.append(Listener(rep.node, rep.port, f"engine-{engine.kind}", path, what, who))
            for extra in (rep.grpc_port, rep.metrics_port):
                if extra is not None:
                    out.append(Listener(rep.node, extra, f"engine-{engine.kind}", path, what, who))
    if stack.monitoring:
        mon = stack.monitoring
        out.append(Listener(mon.node, mon.port, "monitoring", ("monitoring", "port"), "prometheus", ("admin", "gateway")))
        out.append(
            Listener(mon.node, ALERTMANAGER_PORT, "monitoring", ("monitoring",), "alertmanager", ("admin",))
        )
        if mon.grafana_repository:
            out.append(Listener(mon.node, GRAFANA_PORT, "monitoring", ("monitoring",), "grafana", ("any",)))
        for i, node in enumerate(stack.nodes):
            out.append(
                Listener(
                    node.name, NODE_EXPORTER_PORT, "monitoring", ("nodes", i), "node exporter", ("monitoring",)
                )
            )
    if stack.gateway:
        gw = stack.gateway
        for node_name in gw.nodes:
            out.append(Listener(node_name, gw.port, "gateway", ("gateway", "port"), "gateway", ("any",)))
        if gw.store == "postgresql" and gw.store_node:
            out.append(
                Listener(gw.store_node, POSTGRESQL_PORT, "gateway", ("gateway", "store"), "postgresql", ("gateway",))
            )
    return out
