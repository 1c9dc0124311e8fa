"""The cluster layer: Kubernetes objects from the plan, applied server-side with prune and wait.

Building and rendering objects needs nothing beyond Podium itself; `apply` needs the
`kubernetes` client and `validate_objects` needs `kubernetes-validate` (the `kubernetes`
extra), so those two load on first use."""

import importlib
from typing import Any

from podium.cluster.inputs import ClusterInputs
from podium.cluster.objects import Workload, build_objects, render_manifests, workloads

__all__ = [
    "ApplyResult",
    "ClusterInputs",
    "Workload",
    "apply",
    "build_objects",
    "render_manifests",
    "validate_objects",
    "workloads",
]


def __getattr__(name: str) -> Any:
    if name in ("apply", "ApplyResult"):
        module = importlib.import_module("podium.cluster.apply")
        # Importing the submodule bound `apply` to it; the package's `apply` is the function.
        globals().update(apply=module.apply, ApplyResult=module.ApplyResult)
        return globals()[name]
    if name == "validate_objects":
        from podium.cluster.validate import validate_objects

        return validate_objects
    raise AttributeError(name)
