"""The Pulumi program under `pulumi.runtime.set_mocks` (no Pulumi engine or CLI runs here): the
resource graph has the plan's components, versions, hosts and order; every child has its parent;
names are stable. Assertion messages name the resource and the rule it broke."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pulumi
import pytest
from pulumi.runtime.mocks import MockMonitor

from podium.plan.actions import make_plan
from podium.plan.components import BY_NAME, COMPONENT_NAMES
from podium.pulumi import build, urls
from podium.pulumi.host import RoleProvider
from podium.stack.loader import load_stack
from podium.stack.model import Stack
from podium.stack.versions import VersionTable
from tests.fixtures_cluster import cluster_stack, example_stacks, small_stack, versions


@pytest.fixture(autouse=True)
def current_event_loop() -> Iterator[None]:
    """A current event loop for the main thread, as `pulumi up` has one.

    Pulumi's mocks make their futures on the thread's current loop; an asyncio.run() earlier
    in the same test process leaves the main thread with none.
    """
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    try:
        yield
    finally:
        asyncio.set_event_loop(None)
        loop.close()


__all__ = ["cluster_stack", "small_stack", "versions"]

PODIUM_TYPES = ("podium:machines:LibvirtNode", "podium:host:Component", "podium:cluster:Workload")


class Mocks(pulumi.runtime.Mocks):
    def new_resource(self, args: pulumi.runtime.MockResourceArgs) -> tuple[str, dict[str, Any]]:
        return f"{args.name}-id", args.inputs

    def call(self, args: pulumi.runtime.MockCallArgs) -> dict[str, Any]:
        return {}


@dataclass
class Registration:
    type: str
    name: str
    parent: str
    dependencies: list[str]
    inputs: dict[str, Any] = field(default_factory=dict)


class RecordingMonitor(MockMonitor):
    """The mock monitor, keeping what the engine would see: parent and dependencies per resource."""

    def __init__(self, mocks: Mocks) -> None:
        super().__init__(mocks)
        self.registrations: dict[str, Registration] = {}

    def RegisterResource(self, request: Any) -> Any:  # noqa: N802 (the gRPC method's name)
        response = super().RegisterResource(request)
        inputs = pulumi.runtime.rpc.deserialize_properties(request.object)
        self.registrations[response.urn] = Registration(
            request.type, request.name, request.parent, list(request.dependencies), inputs)
        return response


def run_program(stack: Stack, versions: VersionTable, folder: str) -> dict[str, Registration]:
    mocks = Mocks()
    monitor = RecordingMonitor(mocks)
    pulumi.runtime.set_mocks(mocks, "podium", stack.name, preview=False, monitor=monitor)
    appliance = build(stack, versions, folder)
    everything = [r for rs in appliance.components.values() for r in rs]
    everything += list(appliance.machines.values())

    @pulumi.runtime.test  # type: ignore[misc]
    def settle() -> pulumi.Output[Any]:
        return pulumi.Output.all(*[r.urn for r in everything])

    settle()
    return dict(monitor.registrations)


def _owner(regs: dict[str, Registration], urn: str) -> str:
    """The Podium component resource a resource belongs to (itself, or its nearest ancestor)."""
    while urn in regs and regs[urn].type not in PODIUM_TYPES:
        urn = regs[urn].parent
    return urn


def _closure(component: str) -> set[str]:
    out: set[str] = set()
    for name in BY_NAME[component].after:
        out |= {name, *_closure(name)}
    return out


def graph(stack: Stack, versions: VersionTable, folder: str) -> dict[str, Any]:
    regs = run_program(stack, versions, folder)
    podium = {u: r for u, r in regs.items() if r.type in PODIUM_TYPES}
    component_of: dict[str, str] = {}
    for reg in regs.values():
        if reg.type == "pulumi-python:dynamic:Resource":
            component_of[reg.parent] = reg.inputs["component"]
    for urn, reg in podium.items():
        if reg.type == "podium:cluster:Workload":
            component_of[urn] = _workload_component(regs, urn)
    deps = {u: {_owner(regs, d) for d in r.dependencies} - {u} for u, r in podium.items()}
    return {"regs": regs, "podium": podium, "component_of": component_of, "deps": deps}


def _workload_component(regs: dict[str, Registration], urn: str) -> str:
    """A workload's component, from the podium.io/component label of its objects."""
    for reg in regs.values():
        if reg.parent == urn and "metadata" in reg.inputs:
            return str(reg.inputs["metadata"]["labels"]["podium.io/component"])
    raise AssertionError(f"{regs[urn].name} (podium:cluster:Workload): has no objects")


def _reach(deps: dict[str, set[str]], start: str) -> set[str]:
    seen: set[str] = set()
    todo = list(deps.get(start, ()))
    while todo:
        urn = todo.pop()
        if urn not in seen:
            seen.add(urn)
            todo += deps.get(urn, ())
    return seen


def stacks_under_test(cluster: Stack, small: Stack) -> list[Stack]:
    return [cluster, small, *(load_stack(f) for f in example_stacks())]


def test_host_components_are_the_plans_components_versions_and_hosts(
    cluster_stack: Stack, small_stack: Stack, versions: VersionTable
) -> None:
    for stack in stacks_under_test(cluster_stack, small_stack):
        regs = run_program(stack, versions, str(stack.folder))
        roles = [r.inputs for r in regs.values() if r.type == "pulumi-python:dynamic:Resource"]
        got = sorted((i["component"], i["host"], i["version"], i["config_hash"]) for i in roles)
        want = sorted((a.component, a.host, a.to_version, a.config_hash)
                      for a in make_plan(stack, versions) if a.action != "remove")
        assert got == want, f"stack {stack.name}: host components differ from `podium plan`"


def test_every_child_has_its_parent_and_is_named_after_it(
    cluster_stack: Stack, small_stack: Stack, versions: VersionTable
) -> None:
    for stack in stacks_under_test(cluster_stack, small_stack):
        regs = run_program(stack, versions, str(stack.folder))
        for reg in regs.values():
            if reg.type == "pulumi:pulumi:Stack":
                continue
            where = f"{reg.name} ({reg.type}) in stack {stack.name}"
            if reg.type in PODIUM_TYPES or reg.type == "pulumi:providers:kubernetes":
                # The root stack resource is registered once per process, so read its URN.
                assert reg.parent.split("::")[2] == "pulumi:pulumi:Stack", (
                    f"{where}: a top-level resource must be a child of the stack")
                continue
            assert reg.parent in regs, f"{where}: has no parent (parent=self is missing)"
            parent = regs[reg.parent]
            assert parent.type in PODIUM_TYPES, (
                f"{where}: parent {parent.name} is not a Podium component")
            assert reg.name.startswith(f"{parent.name}-"), (
                f"{where}: a child's name must start with its parent's name {parent.name!r}-")


def test_dependencies_follow_the_plans_order(cluster_stack: Stack, small_stack: Stack,
                                             versions: VersionTable) -> None:
    order = {name: i for i, name in enumerate(COMPONENT_NAMES)}
    for stack in stacks_under_test(cluster_stack, small_stack):
        g = graph(stack, versions, str(stack.folder))
        component_of, deps = g["component_of"], g["deps"]
        by_component: dict[str, set[str]] = {}
        for urn, comp in component_of.items():
            by_component.setdefault(comp, set()).add(urn)
        for urn, comp in component_of.items():
            reach = _reach(deps, urn)
            kind = g["podium"][urn].type
            where = f"{g['podium'][urn].name} ({kind}, {comp}) in {stack.name}"
            for before in _closure(comp):
                # The host layer follows the plan among itself; a cluster workload comes after
                # those host components and after the cluster workloads before it. (Cluster
                # objects of an earlier component, like the registry's Secret, need the
                # cluster, so host components never wait for them.)
                # The namespace holds every other object, so it is the one workload first.
                missing = {m for m in by_component.get(before, set()) - reach
                           if g["podium"][m].type == "podium:host:Component"
                           or (kind == "podium:cluster:Workload"
                               and g["podium"][urn].name != "cluster-namespace")}
                assert not missing, (
                    f"{where}: must come after every {before} resource; "
                    f"missing {sorted(g['podium'][m].name for m in missing)}")
            for dep in deps[urn]:
                if (dep in component_of and kind == g["podium"][dep].type
                        and g["podium"][dep].name != "cluster-namespace"):
                    assert order[component_of[dep]] <= order[comp], (
                        f"{where}: depends on {g['podium'][dep].name}, which the plan puts later")


def test_cluster_workloads_wait_for_k3s_and_the_namespace(cluster_stack: Stack,
                                                          versions: VersionTable) -> None:
    g = graph(cluster_stack, versions, str(cluster_stack.folder))
    k3s = {u for u, c in g["component_of"].items()
           if c == "kubernetes" and g["podium"][u].type == "podium:host:Component"}
    assert len(k3s) == 3
    workloads = {g["podium"][u].name: u for u, r in g["podium"].items()
                 if r.type == "podium:cluster:Workload"}
    assert list(workloads)[0] == "cluster-namespace"
    for name, urn in workloads.items():
        reach = _reach(g["deps"], urn)
        assert k3s <= reach, f"{name} (podium:cluster:Workload): must come after k3s on every node"
        if name != "cluster-namespace":
            assert workloads["cluster-namespace"] in reach, (
                f"{name} (podium:cluster:Workload): must come after the namespace")


def test_libvirt_nodes_come_before_their_hosts_components(cluster_stack: Stack,
                                                          versions: VersionTable) -> None:
    g = graph(cluster_stack, versions, str(cluster_stack.folder))
    machines = {r.name: u for u, r in g["podium"].items()
                if r.type == "podium:machines:LibvirtNode"}
    assert set(machines) == {"ctl", "gpu1"}
    types = {r.type for r in g["regs"].values() if g["regs"].get(r.parent) and
             g["regs"][r.parent].name == "gpu1" and r.type.startswith("libvirt")}
    assert types == {"libvirt:index/volume:Volume", "libvirt:index/domain:Domain"}
    for urn, reg in g["podium"].items():
        if reg.type == "podium:host:Component":
            host = reg.name.split("-", 1)[0]
            if host in machines:
                assert machines[host] in g["deps"][urn], (
                    f"{reg.name} (podium:host:Component): must come after machine {host}")


def test_resource_names_are_stable_between_runs(small_stack: Stack,
                                                versions: VersionTable) -> None:
    first = sorted((r.type, r.name) for r in run_program(small_stack, versions, "x").values())
    second = sorted((r.type, r.name) for r in run_program(small_stack, versions, "x").values())
    assert first == second
    assert ("podium:host:Component", "solo-base") in first
    assert ("kubernetes:apps/v1:Deployment", "cluster-chat-deployment-chat-0") in first


def test_stack_outputs_name_gateway_registry_and_monitoring(cluster_stack: Stack) -> None:
    assert urls(cluster_stack) == {
        "gateway_url": "https://10.70.0.10:8443",
        "registry_url": "https://10.70.0.10:5000",
        "monitoring_url": "http://10.70.0.10:9090",
    }


@pytest.mark.parametrize(("olds", "news", "changes", "replaces"), [
    ({"version": "1", "config_hash": "a"}, {"version": "1", "config_hash": "a"}, False, []),
    ({"version": "1", "config_hash": "a"}, {"version": "2", "config_hash": "a"}, True, []),
    ({"version": "1", "config_hash": "a"}, {"version": "1", "config_hash": "b"}, True, []),
    ({"host": "n1", "version": "1"}, {"host": "n2", "version": "1"}, True, ["host"]),
])
def test_host_component_diffs_on_version_and_config_hash(
    olds: dict[str, str], news: dict[str, str], changes: bool, replaces: list[str]
) -> None:
    base = {"stack": "s", "component": "base", "host": "n1"}
    result = RoleProvider().diff("n1/base", {**base, **olds}, {**base, **news})
    assert result.changes is changes and list(result.replaces or []) == replaces


def test_stack_programs_are_a_few_lines_over_podium_pulumi() -> None:
    for folder in example_stacks():
        main = folder / "__main__.py"
        assert main.is_file(), f"stacks/{folder.name}: __main__.py is missing"
        text = main.read_text()
        assert "podium.pulumi" in text and len(text.splitlines()) < 20, folder.name
        assert "runtime: python" in (folder / "Pulumi.yaml").read_text() or "name: python" in (
            folder / "Pulumi.yaml").read_text(), folder.name


@pytest.mark.parametrize("folder", example_stacks(), ids=lambda p: p.name)
def test_stack_program_runs_under_mocks(folder: Any, versions: VersionTable) -> None:
    import runpy

    mocks = Mocks()
    monitor = RecordingMonitor(mocks)
    pulumi.runtime.set_mocks(mocks, "podium", folder.name, preview=False, monitor=monitor)
    appliance = runpy.run_path(str(folder / "__main__.py"), run_name="__main__")["appliance"]
    everything = [r for rs in appliance.components.values() for r in rs]

    @pulumi.runtime.test  # type: ignore[misc]
    def settle() -> pulumi.Output[Any]:
        return pulumi.Output.all(*[r.urn for r in everything])

    settle()
    stack = load_stack(folder)
    hosts = {r.inputs["host"] for r in monitor.registrations.values()
             if r.type == "pulumi-python:dynamic:Resource"}
    assert hosts == set(stack.node_names), f"stacks/{folder.name}: every node gets components"
