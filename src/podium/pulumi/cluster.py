"""`podium:cluster:Workload`: one workload's Kubernetes objects (the same `podium.cluster`
builds) as pulumi_kubernetes resources, with Secret data marked secret."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import pulumi
import pulumi_kubernetes as k8s

from podium.cluster.meta import Manifest

CLASSES: dict[str, Any] = {
    "Namespace": k8s.core.v1.Namespace,
    "ConfigMap": k8s.core.v1.ConfigMap,
    "Secret": k8s.core.v1.Secret,
    "PersistentVolumeClaim": k8s.core.v1.PersistentVolumeClaim,
    "Service": k8s.core.v1.Service,
    "EndpointSlice": k8s.discovery.v1.EndpointSlice,
    "Deployment": k8s.apps.v1.Deployment,
}


def _snake(key: str) -> str:
    return re.sub(r"(?<!^)([A-Z])", r"_\1", key).lower()


@dataclass(frozen=True)
class WorkloadArgs:
    """objects: the workload's manifests from podium.cluster.workloads().
    component: the plan's component they belong to.
    provider: the Kubernetes provider of the stack's cluster.
    """

    objects: list[Manifest]
    component: str
    provider: k8s.Provider


class Workload(pulumi.ComponentResource):
    def __init__(self, name: str, args: WorkloadArgs,
                 opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("podium:cluster:Workload", name, None, opts)
        child = pulumi.ResourceOptions(parent=self, provider=args.provider)
        self.resources: list[pulumi.CustomResource] = []
        for obj in args.objects:
            # Top-level fields are snake_case keyword arguments; nested ones keep the API spelling.
            fields = {_snake(k): v for k, v in obj.items() if k not in ("apiVersion", "kind")}
            if obj["kind"] == "Secret":
                fields["data"] = pulumi.Output.secret(fields.get("data", {}))
            cls = CLASSES[obj["kind"]]
            resource_name = f"{name}-{obj['kind'].lower()}-{obj['metadata']['name']}"
            self.resources.append(cls(resource_name, opts=child, **fields))
        self.register_outputs({"component": args.component,
                               "objects": [f"{o['kind']}/{o['metadata']['name']}"
                                           for o in args.objects]})
