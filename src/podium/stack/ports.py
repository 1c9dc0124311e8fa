"""Which ports each component listens on, per node: one source for the firewall, the monitoring
targets and the check that no port is used twice."""

from __future__ import annotations

from dataclasses import dataclass

from podium.stack.model import Stack
from podium.stack.sections import Engine

NODE_EXPORTER_PORT = 9100
DCGM_EXPORTER_PORT = 9400
ALERTMANAGER_PORT = 9093
GRAFANA_PORT = 3000
POSTGRESQL_PORT = 5432
# glusterd's management ports, and the range its bricks take ports from (the storage role caps
# glusterd's max-port at the range's end, so the firewall opens no more than that).
GLUSTERD_PORTS = (24007, 24008)
GLUSTER_BRICK_PORTS = range(49152, 49252)
# NFSv4 needs 2049 only; rpcbind's 111 serves NFSv3 clients and `showmount`.
NFS_PORTS = (2049, 111)


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
    # Who connects: anyone, the stack's nodes, gateway or monitoring nodes, or the control machine;
    # "local" binds 127.0.0.1 only: no firewall opening, but the port is still taken on the node.
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


def _storage_listeners(stack: Stack) -> list[Listener]:
    """Storage servers take connections from every node of the stack (its clients and peers)."""
    storage = stack.storage
    if storage is None or storage.driver == "local":
        return []
    out = []
    for i, node in enumerate(storage.nodes):
        path: tuple[str | int, ...] = ("storage", "nodes", i)
        if storage.driver == "glusterfs":
            ports = [(p, "glusterd") for p in GLUSTERD_PORTS]
            ports += [(p, "glusterfs brick") for p in GLUSTER_BRICK_PORTS]
        else:
            ports = [(NFS_PORTS[0], "nfs"), (NFS_PORTS[1], "rpcbind")]
        out += [Listener(node, port, "storage", path, what, ("stack",)) for port, what in ports]
    return out


def listeners(stack: Stack) -> list[Listener]:
    """Every port a component of the stack opens, in declaration order."""
    out: list[Listener] = []
    for i, node in enumerate(stack.nodes):
        out.append(
            Listener(
                node.name, node.ssh.port, "base", ("nodes", i, "ssh", "port"), "sshd", ("stack", "admin")
            )
        )
    if stack.registry:
        reg = stack.registry
        out.append(
            Listener(reg.node, reg.port, "registry", ("registry", "port"), "registry", ("stack", "admin"))
        )
        out.append(
            Listener(
                reg.node, reg.port + 1, "registry", ("registry", "port"), "registry metrics", ("monitoring",)
            )
        )
        out.append(
            Listener(reg.node, reg.port + 2, "registry", ("registry", "port"), "registry debug", ("local",))
        )
    out.extend(_storage_listeners(stack))
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
        out.append(
            Listener(
                mon.node, mon.port, "monitoring", ("monitoring", "port"), "prometheus", ("admin", "gateway")
            )
        )
        out.append(
            Listener(mon.node, ALERTMANAGER_PORT, "monitoring", ("monitoring",), "alertmanager", ("admin",))
        )
        if mon.grafana_repository:
            # Grafana's login is the only thing between a caller and every dashboard: admins only.
            out.append(Listener(mon.node, GRAFANA_PORT, "monitoring", ("monitoring",), "grafana", ("admin",)))
        for i, node in enumerate(stack.nodes):
            where: tuple[str | int, ...] = ("nodes", i)
            only_monitoring: tuple[str, ...] = ("monitoring",)
            out.append(
                Listener(node.name, NODE_EXPORTER_PORT, "monitoring", where, "node exporter", only_monitoring)
            )
            if node.gpus:
                out.append(
                    Listener(
                        node.name, DCGM_EXPORTER_PORT, "monitoring", where, "dcgm exporter", only_monitoring
                    )
                )
    if stack.gateway:
        gw = stack.gateway
        for node_name in gw.nodes:
            out.append(Listener(node_name, gw.port, "gateway", ("gateway", "port"), "gateway", ("any",)))
            # /metrics has its own listener, so the API port can be public and metrics not.
            out.append(
                Listener(
                    node_name, gw.scrape_port, "gateway", ("gateway", "metrics_port"), "gateway metrics",
                    ("monitoring",),
                )
            )
            # Replica drains: the control machine only, never the API's clients.
            out.append(
                Listener(
                    node_name, gw.control_port, "gateway", ("gateway", "admin_port"), "gateway control",
                    ("admin",),
                )
            )
            # The Open Inference Protocol over gRPC: the API's clients, as the API port.
            out.append(
                Listener(
                    node_name, gw.grpc_listen_port, "gateway", ("gateway", "grpc_port"), "gateway grpc",
                    ("any",),
                )
            )
        if gw.store == "postgresql" and gw.store_node:
            out.append(
                Listener(
                    gw.store_node,
                    POSTGRESQL_PORT,
                    "gateway",
                    ("gateway", "store"),
                    "postgresql",
                    ("gateway",),
                )
            )
    if stack.mirror_bundle and stack.mirror_node in stack.node_names:
        # Last, so a clash names the mirror's port: the bundle's node serves every node's packages.
        mirror: tuple[str | int, ...] = ("artifact_mirror", "port")
        out.append(Listener(stack.mirror_node, stack.mirror_bundle.port, "mirror", mirror, "artifact mirror",
                            ("stack",)))
    return out
