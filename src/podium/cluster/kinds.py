"""Where each kind of object Podium builds lives in the Kubernetes API."""

from __future__ import annotations

from dataclasses import dataclass

from podium.errors import PodiumError


@dataclass(frozen=True)
class Kind:
    name: str
    api_version: str
    plural: str
    namespaced: bool = True

    @property
    def base(self) -> str:
        return f"/api/{self.api_version}" if "/" not in self.api_version else (
            f"/apis/{self.api_version}")

    def collection(self, namespace: str) -> str:
        if not self.namespaced:
            return f"{self.base}/{self.plural}"
        return f"{self.base}/namespaces/{namespace}/{self.plural}"

    def path(self, namespace: str, name: str) -> str:
        return f"{self.collection(namespace)}/{name}"


KINDS: dict[str, Kind] = {k.name: k for k in (
    Kind("Namespace", "v1", "namespaces", namespaced=False),
    Kind("ConfigMap", "v1", "configmaps"),
    Kind("Secret", "v1", "secrets"),
    Kind("PersistentVolumeClaim", "v1", "persistentvolumeclaims"),
    Kind("Service", "v1", "services"),
    Kind("EndpointSlice", "discovery.k8s.io/v1", "endpointslices"),
    Kind("Deployment", "apps/v1", "deployments"),
    # Fine-tuning runs: created by `podium finetune`, never by apply, so never pruned by it.
    Kind("Job", "batch/v1", "jobs"),
    Kind("Pod", "v1", "pods"),
)}

# Workloads go first so no pod is left pointing at a ConfigMap or Secret that is already gone.
# Volume claims are never pruned: their data outlives a stack edit; they are reported instead.
PRUNE_ORDER = ("Deployment", "Service", "EndpointSlice", "ConfigMap", "Secret")


def kind_of(obj: dict[str, object]) -> Kind:
    name = str(obj.get("kind"))
    try:
        return KINDS[name]
    except KeyError:
        raise PodiumError(
            f"object kind {name!r} is not one Podium applies ({', '.join(KINDS)})"
        ) from None
