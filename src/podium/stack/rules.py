"""Rules that span several fields of a stack; each broken rule names the field path it is about."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from ipaddress import IPv4Network

from podium.stack.devices import gpu_count, gpus_wanted, uses_gpu
from podium.stack.model import Stack
from podium.stack.ports import listeners
from podium.stack.sections import Engine, Model
from podium.stack.types import FROM_BUNDLE

Path = tuple[str | int, ...]

# SGLang's CPU engine needs sgl-kernel's CPU build, which no package index carries (README,
# "SGLang on CPU"): a model that must run on CPU goes to vLLM's CPU build instead.
SGLANG_ON_CPU = "serve the model on CPU with kind vllm and device: cpu"

# The one format of base and adapter that each engine able to serve adapters loads.
ADAPTER_FORMATS = {"llamacpp": "gguf", "vllm": "safetensors"}
# The flags that load an adapter model's LoRA; a second one in the args would load another.
ADAPTER_ARGS = {"lora", "lora-scaled", "lora-init-without-apply", "enable-lora", "lora-modules"}
ENGINE_FORMATS = {
    "llamacpp": {"gguf"},
    "vllm": {"safetensors"},
    "sglang": {"safetensors"},
    "predictive": {"skops", "joblib", "onnx"},
}


@dataclass(frozen=True)
class Problem:
    path: Path
    value: object
    message: str


def check(stack: Stack, components: frozenset[str]) -> list[Problem]:
    """Every broken cross-field rule, in the order the fields appear in the file."""
    return [
        *_unique_nodes(stack),
        *_admin_sources(stack),
        *_node_refs(stack),
        *_machines(stack),
        *_storage(stack),
        *_models(stack),
        *_engines(stack),
        *_gpu_capacity(stack),
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
    refs: list[tuple[Path, str]] = [
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
    refs: list[tuple[Path, str]] = []
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


def _models(stack: Stack) -> Iterator[Problem]:
    seen: set[tuple[str, str]] = set()
    for m, model in enumerate(stack.models):
        key = (model.name, model.version)
        if key in seen:
            yield Problem(("models", m, "version"), model.version, "is declared twice for this model")
        seen.add(key)
        if model.format == "joblib" and not model.trusted:
            yield Problem(
                ("models", m, "format"),
                model.format,
                "is a pickle format that runs code when loaded; use skops, or set trusted: true",
            )
        yield from _adapter_model(stack, m, model)


def _engines(stack: Stack) -> Iterator[Problem]:
    names: set[str] = set()
    for e, engine in enumerate(stack.engines):
        if engine.name in names:
            yield Problem(("engines", e, "name"), engine.name, "is declared twice; engine names are unique")
        names.add(engine.name)
        try:
            model = stack.model(engine.model)
        except KeyError:
            refs = [f"{m.name}:{t}" for m in stack.models for t in [m.version, *m.aliases]]
            yield Problem(
                ("engines", e, "model"),
                engine.model,
                f"is not a model version or alias in models; declared: {', '.join(refs) or 'none'}",
            )
        else:
            yield from _remote_code(engine, e, model)
            if model.adapter is not None:
                yield from _adapter_engine(stack, engine, e, model)
            elif model.format not in ENGINE_FORMATS[engine.kind]:
                *others, last = sorted(ENGINE_FORMATS[engine.kind])
                allowed = f"{', '.join(others)} or {last}" if others else last
                yield Problem(
                    ("engines", e, "model"),
                    engine.model,
                    f"is {model.format}, but {engine.kind} serves {allowed}",
                )
        yield from _engine_devices(stack, e)


def _adapter_model(stack: Stack, m: int, model: Model) -> Iterator[Problem]:
    """An adapter model names both halves, over a base of this stack that is no adapter itself."""
    if (model.base is None) != (model.adapter is None):
        given, missing = ("base", "adapter") if model.adapter is None else ("adapter", "base")
        yield Problem(("models", m, given), getattr(model, given),
                      f"needs {missing} as well: an adapter model is served as adapter: NAME:VERSION "
                      "over base: MODEL:VERSION")
        return
    if model.base is None:
        return
    try:
        base = stack.model(model.base)
    except KeyError:
        refs = [f"{b.name}:{t}" for b in stack.models if b.adapter is None for t in [b.version, *b.aliases]]
        yield Problem(("models", m, "base"), model.base,
                      f"is not a model version or alias in models; declared: {', '.join(refs) or 'none'}")
        return
    if base.adapter is not None:
        yield Problem(("models", m, "base"), model.base,
                      "is itself an adapter model; name the model it was trained from")


def _adapter_engine(stack: Stack, engine: Engine, e: int, model: Model) -> Iterator[Problem]:
    """Only llama.cpp (a GGUF LoRA over a GGUF base) and vLLM (a PEFT adapter over safetensors)
    load an adapter beside their base."""
    if engine.kind not in ADAPTER_FORMATS:
        yield Problem(("engines", e, "kind"), engine.kind,
                      f"cannot serve adapter model {model.name}; serve it with kind llamacpp or vllm")
        return
    if stack.kubernetes and engine.name in stack.kubernetes.engines:
        yield Problem(("kubernetes", "engines", stack.kubernetes.engines.index(engine.name)), engine.name,
                      f"serves adapter model {model.name}, which runs as a systemd unit only; "
                      "leave this engine out of kubernetes.engines")
        return
    for key in sorted(set(engine.args) & ADAPTER_ARGS):
        yield Problem(("engines", e, "args", key), engine.args[key],
                      f"is set by Podium for adapter model {model.name}; remove it from the engine's args")
    try:
        base: Model | None = stack.model(model.base or "")
    except KeyError:
        base = None
    if base is None or base.adapter is not None:
        return  # models[].base says so
    wanted = ADAPTER_FORMATS[engine.kind]
    if base.format != wanted:
        yield Problem(("engines", e, "model"), engine.model,
                      f"is an adapter over {model.base}, which is {base.format}, but {engine.kind} serves "
                      f"adapters over {wanted} bases only; serve a {wanted} base")
    elif model.format != wanted:
        yield Problem(("engines", e, "model"), engine.model,
                      f"is a {model.format} adapter, but {engine.kind} loads {wanted} adapters only; "
                      f"set format: {wanted} on model {model.name}")


def _remote_code(engine: Engine, e: int, model: Model) -> Iterator[Problem]:
    """vLLM and SGLang run Python files shipped beside the weights when asked to: like a pickle,
    that is code from the model, so the model must be marked trusted as joblib ones are."""
    if model.trusted:
        return
    for key, value in engine.args.items():
        if key.replace("_", "-").lower() == "trust-remote-code" and value not in (False, "false", "False"):
            yield Problem(
                ("engines", e, "args", key),
                value,
                f"makes {engine.kind} engine {engine.name} run Python code that comes with model "
                f"{model.name}; set trusted: true on that model if you trust its code, or drop the arg",
            )


def _engine_devices(stack: Stack, e: int) -> Iterator[Problem]:
    engine = stack.engines[e]
    known = {n.name: n for n in stack.nodes}
    if engine.kind == "sglang" and engine.device == "cpu":
        yield Problem(("engines", e, "device"), "cpu",
                      f"is not supported by SGLang; use gpu, or {SGLANG_ON_CPU}")
        return
    if engine.kind == "predictive" and engine.device == "gpu":
        yield Problem(("engines", e, "device"), "gpu",
                      "is not used by the predictive engine (scikit-learn, ONNX Runtime's CPU build); use cpu")
    if not uses_gpu(engine):
        return
    for i, name in enumerate(engine.nodes):
        node = known.get(name)
        if node is None:
            continue
        if node.gpus == 0:
            fix = {"vllm": "set device: cpu on the engine",
                   "sglang": f"place it on a GPU node, or {SGLANG_ON_CPU}"}.get(engine.kind, "place it on a GPU node")
            yield Problem(
                ("engines", e, "nodes", i),
                name,
                f"has no GPUs but {engine.kind} needs one; {fix}",
            )
        elif gpu_count(engine) > node.gpus:
            yield Problem(
                ("engines", e, "gpus_per_replica"),
                engine.gpus_per_replica,
                f"is more than the {node.gpus} GPUs of node {name}",
            )


def _gpu_capacity(stack: Stack) -> Iterator[Problem]:
    """Replicas on one node never share a GPU: what the engines placed there hold together must
    fit the node, or a replica would start on a GPU another one already fills."""
    on_cluster = set(stack.kubernetes.engines) if stack.kubernetes else set()
    engines = [e for e in stack.engines if e.name not in on_cluster]
    for node in stack.nodes:
        wanted = gpus_wanted(engines, node.name)
        total = sum(wanted.values())
        if node.gpus == 0 or total <= node.gpus:
            continue
        e = next(i for i, eng in enumerate(stack.engines) if eng.name in wanted)
        holders = ", ".join(f"{name} {count}" for name, count in wanted.items())
        yield Problem(
            ("engines", e, "replicas"),
            stack.engines[e].replicas,
            f"places engines needing {total} GPUs on node {node.name} ({holders}), which has "
            f"{node.gpus}; lower replicas or gpus_per_replica, or spread the engines over more nodes",
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
