"""The object shapes Podium's workloads share: a node-pinned Deployment, its Service, a ConfigMap
and the init container that pulls a model by digest into the node's model cache."""

from __future__ import annotations

from typing import Any

from podium.cluster.inputs import CA_CONFIGMAP, REGISTRY_AUTH, ClusterInputs
from podium.cluster.meta import CONFIG_HASH, Manifest, metadata, selector
from podium.errors import InvalidInput
from podium.stack.model import Stack
from podium.stack.sections import Model

# Node-local and shared by every engine on the node: a model pulled once is served by all.
MODEL_CACHE = "/var/lib/podium/models"
MODELS_MOUNT = "/models"
CA_MOUNT = "/etc/podium/ca"


def model_dir(model: Model) -> str:
    return f"{MODELS_MOUNT}/{model.name}/{model.version}"


def node_selector(stack: Stack, node: str) -> dict[str, str]:
    """Pin to the stack's node by hostname (k3s names nodes by hostname, the base role sets it),
    plus the labels the stack gives that node."""
    return {"kubernetes.io/hostname": node, **dict(sorted(stack.node(node).labels.items()))}


def registry_address(stack: Stack, what: str) -> str:
    if stack.registry is None:
        raise InvalidInput(
            f"kubernetes: {what} runs on the cluster and pulls its model from the registry, "
            "but the stack has no `registry:` section; add one"
        )
    return f"{stack.node(stack.registry.node).address}:{stack.registry.port}"


def model_pull(stack: Stack, podium_image: str, model: Model, inputs: ClusterInputs,
               what: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The init container running `podium model pull`, which checks every file's digest before it
    is moved into place, and the volumes it needs."""
    volumes: list[dict[str, Any]] = [
        {"name": "models", "hostPath": {"path": MODEL_CACHE, "type": "DirectoryOrCreate"}}
    ]
    container, extra = registry_pull(stack, podium_image, "model-pull",
                                     [f"{model.name}:{model.version}"], model_dir(model),
                                     {"name": "models", "mountPath": MODELS_MOUNT}, inputs, what)
    return container, volumes + extra


def registry_pull(stack: Stack, podium_image: str, name: str, ref: list[str], to: str,
                  mount: dict[str, Any], inputs: ClusterInputs,
                  what: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """An init container `name` running `podium model pull REF... --to TO` into the volume of
    `mount`, with the registry's credentials and CA; returns it and the CA volume it needs."""
    address = registry_address(stack, what)
    command = ["podium", "model", "pull", *ref, "--to", to, "--registry", address]
    mounts: list[dict[str, Any]] = [mount]
    volumes: list[dict[str, Any]] = []
    assert stack.registry is not None
    if not stack.registry.tls:
        command.append("--insecure")
    elif inputs.ca_pem:
        command += ["--ca", f"{CA_MOUNT}/ca.pem"]
        mounts.append({"name": "podium-ca", "mountPath": CA_MOUNT, "readOnly": True})
        volumes.append({"name": "podium-ca", "configMap": {"name": CA_CONFIGMAP}})
    container = {
        "name": name,
        "image": podium_image,
        "command": command,
        # Optional: a registry without authentication needs no credentials.
        "envFrom": [{"secretRef": {"name": REGISTRY_AUTH, "optional": True}}],
        "volumeMounts": mounts,
        "resources": {"requests": {"cpu": "100m", "memory": "128Mi"},
                      "limits": {"memory": "512Mi"}},
        "securityContext": {"allowPrivilegeEscalation": False},
    }
    return container, volumes


def deployment(stack: Stack, component: str, workload: str, name: str, *, node: str,
               containers: list[dict[str, Any]],
               init_containers: list[dict[str, Any]] | None = None,
               volumes: list[dict[str, Any]] | None = None, config_hash: str,
               extra_labels: dict[str, str] | None = None, gpus: int = 0,
               annotations: dict[str, str] | None = None) -> Manifest:
    """One replica pinned to one node: it listens on the node's address and port exactly as the
    host-layer role would, so the gateway, Prometheus and the firewall see the same endpoint.
    Recreate, because the new pod needs the old one's host port."""
    pod_labels = {**metadata(stack, component, workload, name)["labels"], **(extra_labels or {})}
    match = {**selector(stack, workload), **(extra_labels or {})}
    spec: dict[str, Any] = {
        "nodeSelector": node_selector(stack, node),
        "containers": containers,
        "enableServiceLinks": False,
    }
    if init_containers:
        spec["initContainers"] = init_containers
    if volumes:
        spec["volumes"] = volumes
    if gpus:
        spec["tolerations"] = [{"key": "nvidia.com/gpu", "operator": "Exists",
                                "effect": "NoSchedule"}]
    out_meta = metadata(stack, component, workload, name)
    out_meta["labels"].update(extra_labels or {})
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": out_meta,
        "spec": {
            "replicas": 1,
            "strategy": {"type": "Recreate"},
            "selector": {"matchLabels": match},
            "template": {
                "metadata": {"labels": pod_labels,
                             "annotations": {CONFIG_HASH: config_hash, **(annotations or {})}},
                "spec": spec,
            },
        },
    }


def service(stack: Stack, component: str, workload: str, name: str,
            ports: list[tuple[str, int]]) -> Manifest:
    """A ClusterIP Service over every replica of a workload, for clients inside the cluster."""
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": metadata(stack, component, workload, name),
        "spec": {
            "type": "ClusterIP",
            "selector": selector(stack, workload),
            "ports": [{"name": n, "port": p, "targetPort": n, "protocol": "TCP"} for n, p in ports],
        },
    }


def config_map(stack: Stack, component: str, workload: str, name: str,
               data: dict[str, str]) -> Manifest:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": metadata(stack, component, workload, name),
        "data": dict(sorted(data.items())),
    }


def http_probe(path: str, port: str, *, period: int, failures: int,
               delay: int = 0) -> dict[str, Any]:
    probe: dict[str, Any] = {"httpGet": {"path": path, "port": port}, "periodSeconds": period,
                             "failureThreshold": failures, "timeoutSeconds": 5}
    if delay:
        probe["initialDelaySeconds"] = delay
    return probe
