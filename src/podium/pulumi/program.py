"""The Pulumi program of a stack folder: machines, host components and cluster workloads from
the same Plan `podium plan` prints, each depending on what the plan puts before it."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import pulumi
import pulumi_kubernetes as k8s

from podium.cluster.objects import workloads
from podium.plan.actions import make_plan
from podium.plan.components import BY_NAME
from podium.plan.state import HostState
from podium.pulumi.cluster import Workload, WorkloadArgs
from podium.pulumi.host import HostComponent, HostComponentArgs
from podium.pulumi.machines import LibvirtNode, LibvirtNodeArgs
from podium.stack.loader import load_stack
from podium.stack.model import Stack
from podium.stack.versions import VersionTable, load_versions


@dataclass
class Appliance:
    """What the program built, by kind, so tests and callers can inspect the graph."""

    machines: dict[str, LibvirtNode] = field(default_factory=dict)
    # component → its resources in plan order (host components and cluster workloads).
    components: dict[str, list[pulumi.Resource]] = field(default_factory=dict)
    outputs: dict[str, str] = field(default_factory=dict)


def _before(appliance: Appliance, component: str) -> list[pulumi.Resource]:
    """Resources of the components this one comes after; an absent one stands for its own
    predecessors, so order holds across components a stack leaves out."""
    out: list[pulumi.Resource] = []
    for name in BY_NAME[component].after:
        found = appliance.components.get(name)
        out += found if found else _before(appliance, name)
    return list(dict.fromkeys(out))


def urls(stack: Stack) -> dict[str, str]:
    """The stack outputs: where the gateway, the registry and Prometheus answer."""
    out = {}
    if stack.gateway:
        scheme = "https" if stack.gateway.tls else "http"
        address = stack.node(stack.gateway.nodes[0]).address
        out["gateway_url"] = f"{scheme}://{address}:{stack.gateway.port}"
    if stack.registry:
        scheme = "https" if stack.registry.tls else "http"
        out["registry_url"] = (
            f"{scheme}://{stack.node(stack.registry.node).address}:{stack.registry.port}")
    if stack.monitoring:
        address = stack.node(stack.monitoring.node).address
        out["monitoring_url"] = f"http://{address}:{stack.monitoring.port}"
    return out


def build(stack: Stack, versions: VersionTable, stack_folder: str,
          state: Mapping[str, HostState] | None = None,
          kubeconfig: str | None = None) -> Appliance:
    appliance = Appliance()
    network = f"podium-{stack.name}"
    for node in stack.nodes:
        if node.machine and node.machine.driver == "libvirt":
            appliance.machines[node.name] = LibvirtNode(
                node.name, LibvirtNodeArgs(node, network=network))
    for action in make_plan(stack, versions, state):
        if action.action == "remove" or action.to_version is None:
            continue  # a resource no longer declared is removed by Pulumi itself
        depends = _before(appliance, action.component)
        if action.host in appliance.machines:
            depends.append(appliance.machines[action.host])
        resource = HostComponent(
            f"{action.host}-{action.component}",
            HostComponentArgs(stack_folder, action.component, action.host, action.to_version,
                              action.config_hash or ""),
            pulumi.ResourceOptions(depends_on=depends),
        )
        appliance.components.setdefault(action.component, []).append(resource)
    cluster = workloads(stack, versions)
    if cluster:
        assert stack.kubernetes is not None
        k3s = appliance.components.get("kubernetes", [])
        provider = k8s.Provider(
            "cluster", kubeconfig=kubeconfig or stack.kubernetes.kubeconfig,
            namespace=stack.kubernetes.namespace, enable_server_side_apply=True,
            opts=pulumi.ResourceOptions(depends_on=k3s),
        )
        namespace: list[pulumi.Resource] = []
        for item in cluster:
            depends = [*namespace, *k3s, *_before(appliance, item.component)]
            workload = Workload(
                f"cluster-{item.name}", WorkloadArgs(item.objects, item.component, provider),
                pulumi.ResourceOptions(depends_on=list(dict.fromkeys(depends))),
            )
            if item.name == "namespace":
                namespace = [workload]
            appliance.components.setdefault(item.component, []).append(workload)
    appliance.outputs = urls(stack)
    return appliance


def run(folder: str | Path) -> Appliance:
    """What stacks/<name>/__main__.py calls: load, plan, build, export the URLs."""
    folder = Path(folder).resolve()
    stack = load_stack(folder)
    config = pulumi.Config("podium")
    appliance = build(stack, load_versions(), str(folder), kubeconfig=config.get("kubeconfig"))
    for key, value in appliance.outputs.items():
        pulumi.export(key, value)
    return appliance
