"""Every Kubernetes object a stack declares, grouped per workload in the plan's order, and the
manifests `podium render` writes."""

from __future__ import annotations

from dataclasses import dataclass, field

import yaml

from podium.cluster import endpoints, inputs
from podium.cluster.engines import engine_objects
from podium.cluster.gateway import gateway_objects
from podium.cluster.inputs import ClusterInputs
from podium.cluster.meta import Manifest, metadata
from podium.plan.components import COMPONENT_NAMES
from podium.stack.model import Stack
from podium.stack.versions import VersionTable


@dataclass(frozen=True)
class Workload:
    """The objects of one thing that runs (an engine, the gateway) or is named (the registry)."""

    name: str
    # The plan's component it belongs to: it decides the order and the dependencies.
    component: str
    objects: list[Manifest] = field(default_factory=list)


def workloads(stack: Stack, versions: VersionTable,
              given: ClusterInputs | None = None) -> list[Workload]:
    """Workloads in the plan's component order; none when the stack has no Kubernetes section."""
    kube = stack.kubernetes
    if kube is None:
        return []
    given = given or ClusterInputs()
    # Images are tagged with each component's version: the stack's override where it has one.
    versions = versions.for_stack(stack)
    namespace: Manifest = {
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": metadata(stack, "kubernetes", "namespace", kube.namespace, namespaced=False),
    }
    out: list[Workload] = []
    on_cluster = [stack.engine(name) for name in kube.engines]
    registry = [*endpoints.registry_objects(stack), *inputs.registry_objects(stack, given)]
    if registry and (on_cluster or kube.gateway):
        out.append(Workload("registry", "registry", registry))
    for engine in on_cluster:
        out.append(Workload(engine.name, f"engine-{engine.kind}",
                            engine_objects(stack, versions, engine, given)))
    monitoring = endpoints.monitoring_objects(stack)
    if monitoring:
        out.append(Workload("monitoring", "monitoring", monitoring))
    if kube.gateway and stack.gateway:
        out.append(Workload("gateway", "gateway", gateway_objects(stack, versions, given)))
    order = {name: i for i, name in enumerate(COMPONENT_NAMES)}
    # The namespace first, as everything else lives in it; the rest in the plan's component
    # order (a stable sort: engines keep the stack's order within their component).
    ordered = sorted(out, key=lambda w: order[w.component])
    return [Workload("namespace", "kubernetes", [namespace]), *ordered]


def build_objects(stack: Stack, versions: VersionTable,
                  given: ClusterInputs | None = None) -> list[Manifest]:
    """All objects of the stack's cluster, in the order they are applied."""
    return [obj for w in workloads(stack, versions, given) for obj in w.objects]


def render_manifests(stack: Stack, versions: VersionTable,
                     given: ClusterInputs | None = None) -> dict[str, str]:
    """`NN-<workload>.yaml` → a multi-document YAML, numbered in apply order. Without `given`
    no Secret is written: secret values never land in rendered files."""
    out = {}
    for index, workload in enumerate(workloads(stack, versions, given)):
        docs = [yaml.safe_dump(obj, sort_keys=False) for obj in workload.objects]
        out[f"{index:02d}-{workload.name}.yaml"] = "---\n" + "---\n".join(docs)
    return out
