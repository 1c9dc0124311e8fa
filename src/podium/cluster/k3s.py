"""What the kubernetes (k3s) role needs on one host, from the stack and the version table:
where the binary and air-gap images come from and their sha256, the server to join, the node's
labels, and whether it serves GPUs."""

from __future__ import annotations

from typing import Any

from podium.bundle.artifact_urls import stack_artifact_url
from podium.cluster.meta import mirror_host
from podium.stack.model import Stack
from podium.stack.versions import VersionTable

TOKEN_FILE = "/etc/rancher/k3s/podium-token"
SERVER_PORT = 6443
KUBELET_PORT = 10250
# flannel's VXLAN backend, k3s' default, between cluster nodes.
FLANNEL_VXLAN_PORT = 8472
# k3s' own defaults, written into its config so that the nodes' firewall and k3s agree.
CLUSTER_CIDR = "10.42.0.0/16"
SERVICE_CIDR = "10.43.0.0/16"
# The air-gap image archive k3s imports at start; one per architecture, amd64 only for now.
IMAGES_ARTIFACT = "k3s-airgap-images-amd64.tar.zst"
# NVIDIA's device plugin release unless versions.yaml pins `kubernetes.device_plugin`.
DEVICE_PLUGIN_VERSION = "v0.17.0"


def k3s_settings(stack: Stack, versions: VersionTable, host: str) -> dict[str, Any]:
    kube = stack.kubernetes
    assert kube is not None and kube.server is not None
    version = versions.version("kubernetes", stack)
    table = versions.components["kubernetes"].artifacts
    images = table[IMAGES_ARTIFACT]
    node = stack.node(host)
    server = stack.node(kube.server)
    cluster_nodes = [kube.server, *kube.agents]
    return {
        "server": host == kube.server,
        "server_name": kube.server,
        "server_url": f"https://{server.address}:{SERVER_PORT}",
        "namespace": kube.namespace,
        "version": version,
        "node_name": host,
        "node_address": str(node.address),
        "labels": {**dict(sorted(node.labels.items())),
                   **({"podium.io/gpu": "true"} if node.gpus else {})},
        "gpus": node.gpus,
        # The server deploys the device plugin when any node of the cluster has GPUs.
        "cluster_has_gpus": any(stack.node(n).gpus for n in cluster_nodes),
        # What verify expects to see Ready, and the GPUs each node must advertise.
        "cluster_nodes": cluster_nodes,
        "gpu_nodes": {n: stack.node(n).gpus for n in cluster_nodes if stack.node(n).gpus},
        "mirror": stack.mirror_url,
        # None without a mirror: the k3s role then stops and says to set `artifact_mirror`.
        "binary": {"url": stack_artifact_url(stack, versions, "kubernetes", "k3s"),
                   "sha256": table["k3s"].sha256},
        "images": {"url": stack_artifact_url(stack, versions, "kubernetes", IMAGES_ARTIFACT),
                   "sha256": images.sha256, "file": images.file},
        "device_plugin_image": f"{mirror_host(stack)}/nvidia/k8s-device-plugin:"
        f"{versions.extra('kubernetes').get('device_plugin', DEVICE_PLUGIN_VERSION)}",
        "token_file": TOKEN_FILE,
        "tls_sans": [str(server.address), kube.server],
        "cluster_cidr": CLUSTER_CIDR,
        "service_cidr": SERVICE_CIDR,
    }
