"""Rules that span several fields of a stack; each broken rule names the field path it is about."""

from __future__ import annotations

from collections.abc import Iterator
from ipaddress import IPv4Network

from podium.stack.devices import uses_gpu
from podium.stack.engine_rules import engine_rules, gpu_capacity, model_rules
from podium.stack.model import Stack
from podium.stack.ports import listeners
from podium.stack.problems import FieldPath, Problem
from podium.stack.types import FROM_BUNDLE


def check(stack: Stack, components: frozenset[str]) -> list[Problem]:
    """Every broken cross-field rule, in the order the fields appear in the file."""
    return [
        *_unique_nodes(stack),
        *_admin_sources(stack),
        *_node_refs(stack),
        *_machines(stack),
        *_storage(stack),
        *model_rules(stack),
        *engine_rules(stack),
        *gpu_capacity(stack),
        *_gpu_source(stack),
        *_grafana_source(stack),
        *_gateway(stack),
        *_kubernetes(stack),
        *_ports(stack),
        *_versions(stack, components),
    ]


def _unique_nodes(stack: Stack) -> Iterator[Problem]:
    seen_names: set[str] = set()
    seen_addresses: dict[str, str] = {}
    for i, node in enumerate(stack.nodes):
        if node.name in seen_names:
            yield Problem(("nodes", i, "name"), node.name, "is declared twice; node names are unique")
        seen_names.add(node.name)
        address = str(node.address)
        if address in seen_addresses:
            yield Problem(
                ("nodes", i, "address"),
                address,
                f"is already the address of node {seen_addresses[address]}; give each node its own",
            )
        seen_addresses.setdefault(address, node.name)


def _admin_sources(stack: Stack) -> Iterator[Problem]:
    """Without a host network there is no lab host to stand for the administrators, and "anyone"
    is never a default for SSH or the admin ports."""
    if stack.host_network is None and not stack.network.admin_sources:
        yield Problem(
            ("network", "admin_sources"),
            None,
            "is required when the stack has no host_network: name the subnets or nodes "
            "administrators connect from (e.g. [10.0.0.0/24]), so SSH and the admin ports are not "
            "open to everyone",
        )
    for i, source in enumerate(stack.network.admin_sources):
        # Prometheus and Alertmanager have no login of their own: the firewall is their only door.
        if source[0].isdigit() and IPv4Network(source, strict=False).prefixlen == 0:
            yield Problem(
                ("network", "admin_sources", i),
                source,
                "opens SSH and the unauthenticated admin ports (Prometheus, Alertmanager) to every "
                "address; name the subnets administrators connect from",
            )
    # Sources name nodes or subnets (the schema checked the subnets); a name must be a node.
    refs: list[tuple[FieldPath, str]] = [
        (("network", "admin_sources", i), s) for i, s in enumerate(stack.network.admin_sources)
    ]
    refs += [
        (("network", "openings", o, "sources", i), s)
        for o, opening in enumerate(stack.network.openings)
        for i, s in enumerate(opening.sources)
    ]
    known = set(stack.node_names)
    for path, source in refs:
        if source[0].isalpha() and source not in known:
            yield Problem(path, source, "is neither a node of this stack nor an IPv4 address or subnet")


def _node_refs(stack: Stack) -> Iterator[Problem]:
    known = set(stack.node_names)
    refs: list[tuple[FieldPath, str]] = []
    if stack.mirror_bundle and stack.mirror_bundle.node:
        refs.append((("artifact_mirror", "node"), stack.mirror_bundle.node))
    if stack.storage:
        refs += [(("storage", "nodes", i), n) for i, n in enumerate(stack.storage.nodes)]
        refs += [(("storage", "clients", i), n) for i, n in enumerate(stack.storage.clients or [])]
    if stack.registry:
        refs.append((("registry", "node"), stack.registry.node))
    for e, engine in enumerate(stack.engines):
        refs += [(("engines", e, "nodes", i), n) for i, n in enumerate(engine.nodes)]
    if stack.monitoring:
        refs.append((("monitoring", "node"), stack.monitoring.node))
    if stack.gateway:
        refs += [(("gateway", "nodes", i), n) for i, n in enumerate(stack.gateway.nodes)]
        if stack.gateway.store_node:
            refs.append((("gateway", "store_node"), stack.gateway.store_node))
    for section in ("bridges", "vlans", "openings"):
        for b, item in enumerate(getattr(stack.network, section)):
            refs += [(("network", section, b, "nodes", i), n) for i, n in enumerate(item.nodes)]
    if stack.kubernetes:
        if stack.kubernetes.server:
            refs.append((("kubernetes", "server"), stack.kubernetes.server))
        refs += [(("kubernetes", "agents", i), n) for i, n in enumerate(stack.kubernetes.agents)]
    listed = ", ".join(sorted(known))
    for path, name in refs:
        if name not in known:
            yield Problem(path, name, f"is not a node of this stack; declared nodes: {listed}")


def _machines(stack: Stack) -> Iterator[Problem]:
    net = stack.host_network
    for i, node in enumerate(stack.nodes):
        machine = node.machine
        if machine is None:
            continue
        if machine.driver == "libvirt" and not machine.hypervisor:
            yield Problem(
                ("nodes", i, "machine", "hypervisor"),
                None,
                "is required for a libvirt machine; give a URI such as qemu:///system",
            )
        if machine.driver == "nspawn" and machine.pci_passthrough:
            yield Problem(
                ("nodes", i, "machine", "pci_passthrough"),
                machine.pci_passthrough,
                "needs a libvirt VM; nspawn machines cannot take PCI devices",
            )
        if net is None:
            yield Problem(
                ("nodes", i, "machine"),
                machine.driver,
                "needs a host_network section (subnet and gateway) for the machines Podium creates",
            )
        elif node.address not in net.subnet or node.address == net.gateway:
            yield Problem(
                ("nodes", i, "address"),
                str(node.address),
                f"must be a host address in host_network.subnet {net.subnet} other than its gateway",
            )
    if net and net.gateway not in net.subnet:
        yield Problem(("host_network", "gateway"), str(net.gateway), f"is outside {net.subnet}")


def _storage(stack: Stack) -> Iterator[Problem]:
    storage = stack.storage
    if storage is None:
        return
    if storage.replicas > len(storage.nodes):
        yield Problem(
            ("storage", "replicas"),
            storage.replicas,
            f"is more than the {len(storage.nodes)} storage node(s); lower it or add nodes",
        )
    if storage.driver in ("local", "nfs") and len(storage.nodes) != 1:
        yield Problem(
            ("storage", "nodes"),
            storage.nodes,
            f"must name exactly one node for the {storage.driver} driver",
        )
    vlans = [v.name for v in stack.network.vlans]
    if storage.network and storage.network not in vlans:
        yield Problem(
            ("storage", "network"),
            storage.network,
            f"is not a VLAN in network.vlans; declared: {', '.join(vlans) or 'none'}",
        )


def _floating_address(stack: Stack) -> Iterator[Problem]:
    """gateway.address moves between gateway nodes on one link: a free address of the subnet."""
    gw = stack.gateway
    if gw is None or gw.address is None:
        return
    where, value = ("gateway", "address"), str(gw.address)
    if len(gw.nodes) < 2:
        yield Problem(where, value, "needs two or more gateway nodes to move between; add a node to"
                      " gateway.nodes or remove gateway.address and use the node's own address")
    holder = next((n.name for n in stack.nodes if n.address == gw.address), None)
    if holder is not None:
        yield Problem(where, value, f"is node {holder}'s own address; choose a free address of the"
                      " stack's subnet for the gateways")
    net = stack.host_network
    if net is not None and (gw.address not in net.subnet or gw.address in (net.gateway, net.subnet.network_address,
                                                                          net.subnet.broadcast_address)):
        yield Problem(where, value, f"must be a free host address in host_network.subnet {net.subnet}"
                      f" other than its gateway {net.gateway}")


def _gateway(stack: Stack) -> Iterator[Problem]:
    gw = stack.gateway
    if gw is None:
        return
    model_names = {m.name for m in stack.models}
    if gw.store == "sqlite" and len(gw.nodes) > 1:
        yield Problem(
            ("gateway", "store"),
            "sqlite",
            "cannot be shared by several gateway nodes; use postgresql with a store_node",
        )
    if gw.store == "postgresql" and not gw.store_node:
        yield Problem(("gateway", "store_node"), None, "is required when store is postgresql")
    for name in gw.nodes:
        machine = next((n.machine for n in stack.nodes if n.name == name), None)
        if machine is not None and gw.workers > machine.cpus:
            yield Problem(("gateway", "workers"), gw.workers,
                          f"is more than the {machine.cpus} CPUs of gateway node {name};"
                          f" set workers to {machine.cpus} or fewer, or give {name} more cpus")
    yield from _floating_address(stack)
    team_names: set[str] = set()
    for t, team in enumerate(gw.teams):
        if team.name in team_names:
            yield Problem(("gateway", "teams", t, "name"), team.name, "is declared twice")
        team_names.add(team.name)
        for i, name in enumerate(team.models if team.models != "*" else []):
            if name not in model_names:
                yield Problem(("gateway", "teams", t, "models", i), name,
                              f"is not a model name; declared: {', '.join(sorted(model_names))}")
    key_names: set[str] = set()
    for k, key in enumerate(gw.keys):
        if key.name in key_names:
            yield Problem(("gateway", "keys", k, "name"), key.name, "is declared twice")
        key_names.add(key.name)
        if key.team is not None and key.team not in team_names:
            yield Problem(
                ("gateway", "keys", k, "team"), key.team,
                f"is not a team of gateway.teams; declared: {', '.join(sorted(team_names)) or 'none'}",
            )
        if key.models != "*":
            for i, name in enumerate(key.models):
                if name not in model_names:
                    yield Problem(
                        ("gateway", "keys", k, "models", i),
                        name,
                        f"is not a model name; declared: {', '.join(sorted(model_names)) or 'none'}",
                    )
    for name in gw.prices:
        if name not in model_names:
            yield Problem(("gateway", "prices", name), name, "is not a model name of this stack")


def _gpu_source(stack: Stack) -> Iterator[Problem]:
    # A node of a bundle stack reaches only the bundle, which carries NVIDIA's packages in its
    # nvidia-repository slot alone (Debian's non-free is not in its apt repository).
    if stack.mirror_bundle and stack.gpu.source != "mirror" and any(n.gpus for n in stack.nodes):
        yield Problem(
            ("gpu", "source"),
            stack.gpu.source,
            "is out of reach of nodes that install from artifact_mirror's bundle; set gpu.source: "
            "mirror and drop NVIDIA's repository into the bundle's slot slots/gpu/",
        )


def _grafana_source(stack: Stack) -> Iterator[Problem]:
    mon = stack.monitoring
    if mon is not None and mon.grafana_repository == FROM_BUNDLE and not stack.mirror_bundle:
        yield Problem(
            ("monitoring", "grafana_repository"),
            FROM_BUNDLE,
            "takes Grafana from artifact_mirror's bundle, which this stack does not serve; set "
            "artifact_mirror: {bundle: PATH}, or name Grafana's apt repository",
        )


def _kubernetes(stack: Stack) -> Iterator[Problem]:
    kube = stack.kubernetes
    if kube is None:
        return
    if kube.distribution == "k3s" and not kube.server:
        yield Problem(("kubernetes", "server"), None, "is required for k3s; name the server node")
    if kube.distribution == "existing" and not kube.kubeconfig:
        yield Problem(("kubernetes", "kubeconfig"), None, "is required for an existing cluster")
    engines = {e.name for e in stack.engines}
    for i, name in enumerate(kube.engines):
        if name not in engines:
            yield Problem(("kubernetes", "engines", i), name, "is not an engine of this stack")
    if kube.trainer and kube.distribution == "k3s":
        members = {kube.server, *kube.agents}
        for name in stack.trainer_nodes:
            if name not in members:
                yield Problem(("kubernetes", "trainer"), True,
                              f"runs fine-tuning Jobs on nodes labelled for training, but {name} "
                              "is not a cluster node; add it to kubernetes.agents or drop its label")


def _ports(stack: Stack) -> Iterator[Problem]:
    taken: dict[tuple[str, int], str] = {}
    for item in listeners(stack):
        key = (item.node, item.port)
        if key in taken and taken[key] != item.what:
            yield Problem(
                item.path,
                item.port,
                f"is already used on node {item.node} by {taken[key]}; pick another port for {item.what}",
            )
        taken.setdefault(key, item.what)


def _versions(stack: Stack, components: frozenset[str]) -> Iterator[Problem]:
    from podium.stack.versions import load_versions

    table = load_versions()
    for name, version in stack.versions.items():
        if name not in components:
            yield Problem(
                ("versions", name),
                None,
                f"is not a component; known: {', '.join(sorted(components))}; override one of these",
            )
            continue
        entry = table.components.get(name)
        if entry is None or version == entry.version:
            continue
        why = entry.why_unpinnable(name, version)
        cpu = (entry.model_extra or {}).get("cpu_requirements")
        if not why and cpu and _on_cpu(stack, name) and not entry.moves("cpu_requirements"):
            why = (f"{name}'s CPU build, which this stack runs, is pinned apart ({', '.join(cpu)}); "
                   f"change cpu_requirements under components.{name} in stacks/versions.yaml instead")
        if why:
            yield Problem(("versions", name), version, f"cannot be pinned: {why}")
    branch = stack.gpu.driver_branch
    if "driver_branch" in stack.gpu.model_fields_set and stack.versions.get("gpu", branch) != branch:
        yield Problem(
            ("versions", "gpu"),
            stack.versions["gpu"],
            f"differs from gpu.driver_branch {branch!r}: the gpu component's version is its driver "
            "branch; set one of the two",
        )


def _on_cpu(stack: Stack, component: str) -> bool:
    """Whether an engine of this component runs without GPUs on a host (its CPU build)."""
    on_cluster = set(stack.kubernetes.engines) if stack.kubernetes else set()
    return any(
        f"engine-{e.kind}" == component and e.name not in on_cluster
        and not uses_gpu(e)
        for e in stack.engines
    )
