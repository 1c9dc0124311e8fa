"""The appliance's components: their order, the hosts each lands on, and the settings a role
gets on each host (the config whose hash decides `reconfigure`)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from podium.bundle.artifact_urls import mirror_form
from podium.plan.audiences import audiences, source_address
from podium.plan.egress import cluster_settings, egress_settings, ntp_servers
from podium.plan.mirror_settings import mirror_hosts, mirror_settings, mirror_source
from podium.plan.monitoring_settings import host_engines, monitoring_settings
from podium.stack.devices import device, gpu_count, uses_gpu
from podium.stack.model import Stack
from podium.stack.ports import POSTGRESQL_PORT, listeners, replicas
from podium.stack.sections import Model

Settings = dict[str, Any]
# The gateways' database and its account on the store node.
STORE_DATABASE = STORE_USER = "podium"
# The name of its password among the stack's secrets (the store role and the gateways read it).
STORE_PASSWORD = "store-password"


@dataclass(frozen=True)
class Component:
    name: str
    # Components this one needs laid down first, when they are part of the stack.
    after: tuple[str, ...]
    hosts: Callable[[Stack], list[str]]
    settings: Callable[[Stack, str], Settings]

    @property
    def role(self) -> str:
        """The role folder: hyphens become underscores so roles import as Python packages."""
        return self.name.replace("-", "_")


def _all(stack: Stack) -> list[str]:
    return stack.node_names


def _ordered(stack: Stack, names: set[str]) -> list[str]:
    return [n for n in stack.node_names if n in names]


def _base_settings(stack: Stack, host: str) -> Settings:
    node = stack.node(host)
    allowed = audiences(stack)
    openings = []
    for item in listeners(stack):
        if item.node == host and "local" not in item.audience:
            sources = sorted({s for who in item.audience for s in allowed[who]})
            if not sources and "any" not in item.audience:
                # Nobody of that kind in the stack (no gateway, say): fall back to the control machine,
                # never to "anyone".
                sources = allowed["admin"]
            if "any" in item.audience or "0.0.0.0/0" in sources:
                sources = []
            openings.append({"port": item.port, "protocol": "tcp", "sources": sources, "what": item.what})
    for opening in stack.network.openings:
        if host in opening.nodes:
            sources = [source_address(stack, s) for s in opening.sources] or allowed["stack"]
            openings.append(
                {
                    "port": opening.port,
                    "protocol": opening.protocol,
                    "sources": sources,
                    "what": "declared opening",
                }
            )
    return {
        "hostname": host,
        "address": str(node.address),
        "hosts": [{"name": n.name, "address": str(n.address)} for n in stack.nodes],
        "ntp_servers": ntp_servers(stack),
        "admin_user": node.ssh.user,
        "ssh_port": node.ssh.port,
        "openings": sorted(openings, key=lambda o: (o["port"], o["protocol"], o["what"])),
        "egress": egress_settings(stack),
        "cluster": cluster_settings(stack, host),
        "mirror": mirror_source(stack),
        # VRRP (IP protocol 112) between gateway nodes sharing gateway.address, from each other only.
        **({"vrrp_peers": peers} if (peers := _vrrp_peers(stack, host)) else {}),
    }


def _vrrp_peers(stack: Stack, host: str) -> list[str]:
    gw = stack.gateway
    if gw is None or gw.address is None or host not in gw.nodes:
        return []
    return sorted(str(stack.node(n).address) for n in gw.nodes if n != host)


def _network_hosts(stack: Stack) -> list[str]:
    names = {n for b in stack.network.bridges for n in b.nodes} | {n for v in stack.network.vlans for n in v.nodes}
    return _ordered(stack, names)


def _network_settings(stack: Stack, host: str) -> Settings:
    node = stack.node(host)
    vlans = []
    for vlan in stack.network.vlans:
        if host not in vlan.nodes:
            continue
        hosts = list(vlan.subnet.hosts())
        index = vlan.nodes.index(host)
        vlans.append(
            {
                "name": vlan.name,
                "id": vlan.id,
                "parent": vlan.parent or node.interface,
                "mtu": vlan.mtu,
                "address": f"{hosts[index]}/{vlan.subnet.prefixlen}",
            }
        )
    bridges = [
        {"name": b.name, "interfaces": b.interfaces, "mtu": b.mtu}
        for b in stack.network.bridges
        if host in b.nodes
    ]
    parent_address = None
    if node.machine and stack.host_network:
        # A created machine's networkd file for its own interface must keep its address.
        net = stack.host_network
        parent_address = {
            "interface": node.interface,
            "address": f"{node.address}/{net.subnet.prefixlen}",
            "gateway": str(net.gateway),
        }
    # An interface left None is the one holding `address` on the node, found by the role.
    return {
        "address": str(node.address),
        "vlans": vlans,
        "bridges": bridges,
        "parent_address": parent_address,
    }


def _storage_hosts(stack: Stack) -> list[str]:
    if not stack.storage:
        return []
    clients = stack.storage.clients or stack.node_names
    return _ordered(stack, {*stack.storage.nodes, *clients})


def _storage_settings(stack: Stack, host: str) -> Settings:
    storage = stack.storage
    assert storage is not None
    clients = storage.clients or stack.node_names
    return {
        "driver": storage.driver,
        "servers": storage.nodes,
        # Storage traffic goes to these addresses: the storage VLAN's when one is named.
        "server_addresses": [_storage_address(stack, n) for n in storage.nodes],
        "client_addresses": [_storage_address(stack, n) for n in _ordered(stack, set(clients))],
        "server": host in storage.nodes,
        "client": host in clients,
        "replicas": storage.replicas,
        "volume": storage.volume,
        "mount": storage.mount,
        "network": storage.network,
        # A brick is a folder inside the brick file system, so a brick disk that failed to
        # mount leaves the brick missing instead of filling the root file system.
        "brick": f"/srv/bricks/{storage.volume}/brick",
        "export": f"/srv/exports/{storage.volume}",
    }


def _storage_address(stack: Stack, name: str) -> str:
    storage = stack.storage
    assert storage is not None
    for vlan in stack.network.vlans:
        if vlan.name == storage.network and name in vlan.nodes:
            return str(list(vlan.subnet.hosts())[vlan.nodes.index(name)])
    return str(stack.node(name).address)


def _gpu_settings(stack: Stack, host: str) -> Settings:
    from podium.stack.versions import load_versions

    node = stack.node(host)
    return {
        "expected_gpus": node.gpus,
        "nvswitch": node.nvswitch,
        **stack.gpu.model_dump(),
        # The gpu component's version is its driver branch: the stack's override (or its
        # gpu.driver_branch), else the table's.
        "driver_branch": load_versions().version("gpu", stack),
        "mirror": stack.mirror_url,
        # A bundle keeps NVIDIA's repositories in its slot, a site's mirror under nvidia/.
        "mirror_form": mirror_form(stack),
    }


def _registry_settings(stack: Stack, host: str) -> Settings:
    reg = stack.registry
    assert reg is not None
    node = stack.node(reg.node)
    return {
        **reg.model_dump(),
        "address": str(node.address),
        # nginx passes the registry's /metrics on here, for Prometheus (the firewall admits only
        # the monitoring node); docker-registry's debug listener (metrics, expvar, pprof) binds
        # 127.0.0.1 at the port after it.
        "debug_port": reg.port + 1,
        "debug_local_port": reg.port + 2,
        # Names its TLS certificate carries: the node's name and address.
        "server_names": [reg.node],
        "server_addresses": [str(node.address)],
    }


def _engine_component(kind: str) -> Component:
    def hosts(stack: Stack) -> list[str]:
        names = {r.node for e in host_engines(stack, kind) for r in replicas(e)}
        return _ordered(stack, names)

    def settings(stack: Stack, host: str) -> Settings:
        out = []
        gpu_ids = _gpu_ids(stack, host)
        for engine in host_engines(stack, kind):
            model = stack.model(engine.model)
            for rep in replicas(engine):
                if rep.node != host:
                    continue
                out.append(
                    {
                        "engine": engine.name,
                        "replica": rep.index,
                        "port": rep.port,
                        "grpc_port": rep.grpc_port,
                        "metrics_port": rep.metrics_port,
                        "model": model.name,
                        "model_ref": engine.model,
                        "model_version": model.version,
                        "model_format": model.format,
                        "trusted": model.trusted,
                        "trusted_types": model.trusted_types,
                        "device": device(engine),
                        "gpus": gpu_count(engine),
                        "args": engine.args,
                        "gpu_ids": gpu_ids.get((engine.name, rep.index), []),
                        **adapter_settings(stack, model),
                    }
                )
        reg = stack.registry
        registry = None
        if reg is not None:
            scheme = "https" if reg.tls else "http"
            registry = {"url": f"{scheme}://{stack.node(reg.node).address}:{reg.port}"}
        # Nodes pull models from the registry by digest, with its CA and the pull account, and
        # install the engine from the bundle's wheelhouse when the stack serves one.
        return {"replicas": out, "registry": registry, "mirror": mirror_source(stack)}

    return Component(f"engine-{kind}", ("registry", "gpu", "storage"), hosts, settings)


def adapter_settings(stack: Stack, model: Model) -> Settings:
    """An adapter model's replicas pull and load its base's weights and the adapter beside them;
    they still answer to the adapter model's own name. Nothing for a plain model, so its
    settings (and their hash) stay as they were."""
    if model.adapter is None:
        return {}
    base = stack.model(model.base or "")
    name, _, version = model.adapter.partition(":")
    return {
        "model_version": base.version,
        "model_format": base.format,
        "base_model": base.name,
        "adapter": {"model": name, "model_version": version, "model_ref": model.adapter,
                    "model_format": model.format},
    }


def _gpu_ids(stack: Stack, host: str) -> dict[tuple[str, int], list[int]]:
    """GPU indices of each GPU replica on `host`, handed out in stack order across every engine
    kind, so two engines on one node never share a GPU."""
    out: dict[tuple[str, int], list[int]] = {}
    taken = 0
    on_cluster = set(stack.kubernetes.engines) if stack.kubernetes else set()
    for engine in stack.engines:
        if engine.name in on_cluster or not uses_gpu(engine):
            continue
        for rep in replicas(engine):
            if rep.node == host:
                out[(engine.name, rep.index)] = list(range(taken, taken + gpu_count(engine)))
                taken += gpu_count(engine)
    return out


def _gateway_settings(stack: Stack, host: str) -> Settings:
    gw = stack.gateway
    assert gw is not None
    models: dict[str, Any] = {}
    for engine in stack.engines:
        model = stack.model(engine.model)
        entry = models.setdefault(
            model.name,
            {"kind": "predictive" if engine.kind == "predictive" else "llm", "replicas": [],
             "default_max_tokens": model.default_max_tokens},
        )
        for rep in replicas(engine):
            address = stack.node(rep.node).address
            entry["replicas"].append(f"http://{address}:{rep.port}")
            if rep.grpc_port is not None:
                # MLServer's own gRPC endpoint: the gateway's gRPC calls go there unconverted.
                entry.setdefault("grpc_replicas", []).append(f"{address}:{rep.grpc_port}")
    return {
        "port": gw.port,
        "metrics_port": gw.scrape_port,
        "admin_port": gw.control_port,
        "grpc_port": gw.grpc_listen_port,
        "drain_timeout_s": gw.drain_timeout_s,
        "max_connections": gw.max_connections,
        "write_timeout_s": gw.write_timeout_s,
        # Only when more than one, so single-worker gateways keep their recorded config.
        **({"workers": gw.workers} if gw.workers > 1 else {}),
        "tls": gw.tls,
        "store": gw.store,
        "store_node": gw.store_node,
        "store_address": str(stack.node(gw.store_node).address) if gw.store_node else None,
        "store_port": POSTGRESQL_PORT,
        "store_database": STORE_DATABASE,
        "store_user": STORE_USER,
        "models": models,
        "keys": [k.model_dump(mode="json") for k in gw.keys],
        # Only when declared, so stacks without teams keep their recorded gateway config.
        **({"teams": [t.model_dump(mode="json") for t in gw.teams]} if gw.teams else {}),
        "mirror": mirror_source(stack),
        "prices": {k: v.model_dump() for k, v in gw.prices.items()},
        # The operator console answers the admin sources alone; its overview asks Prometheus.
        "console_sources": audiences(stack)["admin"],
        "prometheus_url": (f"http://{stack.node(stack.monitoring.node).address}:{stack.monitoring.port}"
                           if stack.monitoring else None),
        # Only when declared, so stacks without one keep their recorded gateway config.
        **({"floating": _floating_settings(stack, host)} if gw.address else {}),
    }


def _floating_settings(stack: Stack, host: str) -> Settings:
    """keepalived's part: the address, this node's VRRP peers and its priority."""
    gw = stack.gateway
    assert gw is not None and gw.address is not None
    node = stack.node(host)
    return {
        "address": str(gw.address),
        # The lowest byte names the address' VRRP router on the link (1-254 for a host address).
        "router_id": int(gw.address) % 256 or 1,
        "own": str(node.address),
        # Unicast to the other gateway nodes: the lab's bridge and many clouds drop multicast.
        "peers": [str(stack.node(n).address) for n in gw.nodes if n != host],
        # The first gateway node starts as the holder; later ones follow in declared order.
        "priority": 200 - 10 * gw.nodes.index(host),
        # The role names the interface holding the node's address where the stack does not.
        "interface": node.interface,
    }


def _store_hosts(stack: Stack) -> list[str]:
    gw = stack.gateway
    return [gw.store_node] if gw and gw.store == "postgresql" and gw.store_node else []


def _store_settings(stack: Stack, host: str) -> Settings:
    gw = stack.gateway
    assert gw is not None
    return {
        "address": str(stack.node(host).address),
        "port": POSTGRESQL_PORT,
        "database": STORE_DATABASE,
        "user": STORE_USER,
        # The only hosts pg_hba lets in (the firewall opens the port to them alone too).
        "clients": [str(stack.node(n).address) for n in gw.nodes],
        # A nightly custom-format dump; the newest `keep` stay on the node.
        "dump": {"calendar": "*-*-* 03:00:00", "keep": 7},
    }


def _kubernetes_hosts(stack: Stack) -> list[str]:
    kube = stack.kubernetes
    if not kube or kube.distribution != "k3s" or not kube.server:
        return []
    return _ordered(stack, {kube.server, *kube.agents})


def _kubernetes_settings(stack: Stack, host: str) -> Settings:
    from podium.cluster.k3s import k3s_settings
    from podium.stack.versions import load_versions

    return k3s_settings(stack, load_versions(), host)


def _trainer_hosts(stack: Stack) -> list[str]:
    """Nodes the stack labels for training (`labels: {trainer: "true"}`); none when its jobs run
    on the cluster, where the trainer image holds what the role would lay down."""
    return [] if stack.trains_on_cluster else stack.trainer_nodes


def _when(attr: str, hosts: Callable[[Stack], list[str]]) -> Callable[[Stack], list[str]]:
    return lambda stack: hosts(stack) if getattr(stack, attr) else []


COMPONENTS: tuple[Component, ...] = (
    # First: every other node's packages, base's included, come from the bundle it serves.
    Component("mirror", (), mirror_hosts, mirror_settings),
    Component("base", ("mirror",), _all, _base_settings),
    Component("network", ("base",), _network_hosts, _network_settings),
    Component("storage", ("network",), _storage_hosts, _storage_settings),
    Component("gpu", ("base",), lambda s: [n.name for n in s.nodes if n.gpus > 0], _gpu_settings),
    Component(
        "registry",
        ("storage",),
        lambda s: [s.registry.node] if s.registry else [],
        _registry_settings,
    ),
    Component("kubernetes", ("gpu", "registry"), _kubernetes_hosts, _kubernetes_settings),
    # Before the engines: a node that trains may also serve, and training needs nothing of theirs.
    # Its venv from the bundle's wheelhouse where the stack has one (air gap), else shipped.
    Component("trainer", ("base",), _trainer_hosts, lambda stack, host: {"mirror": mirror_source(stack)}),
    _engine_component("llamacpp"),
    _engine_component("vllm"),
    _engine_component("sglang"),
    _engine_component("predictive"),
    Component(
        "monitoring",
        ("engine-llamacpp", "engine-vllm", "engine-sglang", "engine-predictive"),
        _when("monitoring", _all),
        monitoring_settings,
    ),
    # The gateways' PostgreSQL, when several share limits and usage.
    Component("store", ("base",), _store_hosts, _store_settings),
    Component(
        "gateway",
        ("monitoring", "engine-llamacpp", "engine-predictive", "store"),
        lambda s: list(s.gateway.nodes) if s.gateway else [],
        _gateway_settings,
    ),
)

COMPONENT_NAMES: tuple[str, ...] = tuple(c.name for c in COMPONENTS)
BY_NAME: dict[str, Component] = {c.name: c for c in COMPONENTS}
