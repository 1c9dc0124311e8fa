"""The cluster layer's part of `podium up`: after the host layer, apply the stack's Kubernetes
objects server-side, prune what the stack no longer declares and wait for rollouts."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from rich.console import Console

from podium.errors import PodiumError
from podium.secrets import StackSecrets
from podium.stack.model import Stack
from podium.stack.versions import VersionTable

if TYPE_CHECKING:
    from kubernetes.client import ApiClient


def kubeconfig_path(stack_name: str) -> Path:
    """Where the k3s role leaves the cluster's kubeconfig on the control machine (0600)."""
    return StackSecrets(stack_name).path("kubeconfig")


def apply_cluster(stack: Stack, versions: VersionTable, console: Console, dry_run: bool = False) -> int:
    """Apply the cluster objects; returns how many objects were applied or pruned."""
    from podium.cluster import build_objects
    from podium.cluster.apply import apply
    from podium.cluster.stack_inputs import stack_inputs

    kube = stack.kubernetes
    if kube is None:
        return 0
    if dry_run:
        # Counted without the stack's secrets: a dry run writes no certificate or token.
        objects = build_objects(stack, versions)
        console.print(f"cluster: would apply {len(objects)} objects to namespace {kube.namespace}")
        return 0
    client = api_client(stack)
    # The Secrets and CA the pods name, from the stack's secrets: without them a pod that
    # mounts the gateway's certificate or pulls from the registry never starts.
    objects = build_objects(stack, versions, stack_inputs(stack))
    result = apply(objects, client, kube.namespace, prune=True, wait=True, stack_name=stack.name, console=console)
    console.print(
        f"[green]✓[/] cluster: applied {len(result.applied)}, pruned {len(result.pruned)}, "
        f"rolled out {len(result.rolled_out)}"
    )
    return len(result.applied) + len(result.pruned)


def api_client(stack: Stack) -> ApiClient:
    """A client of the stack's cluster, from kubernetes.kubeconfig or the one k3s left here."""
    kube = stack.kubernetes
    assert kube is not None
    config = Path(kube.kubeconfig).expanduser() if kube.kubeconfig else kubeconfig_path(stack.name)
    if not config.is_file():
        raise PodiumError(
            f"no kubeconfig at {config}; for k3s run `podium up {stack.name} --only kubernetes` first, "
            "or set kubernetes.kubeconfig"
        )
    from kubernetes import config as kube_config

    return kube_config.new_client_from_config(str(config))
