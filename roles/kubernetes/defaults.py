"""Defaults of role kubernetes; the plan's settings arrive as host data `podium_kubernetes`. The
cluster's join token is read at deploy time from the stack's secrets (0600 on the control
machine), never passed through host data."""

DEFAULTS = {
    "kubernetes_binary": "/usr/local/bin/k3s",
    "kubernetes_config_dir": "/etc/rancher/k3s",
    "kubernetes_images_dir": "/var/lib/rancher/k3s/agent/images",
    "kubernetes_manifests_dir": "/var/lib/rancher/k3s/server/manifests",
    "kubernetes_data_dir": "/var/lib/rancher/k3s",
    # The server's kubeconfig with its address instead of 127.0.0.1, fetched to the control
    # machine (to `kubernetes_kubeconfig_local`, else the stack's secrets folder).
    "kubernetes_kubeconfig_remote": "/etc/rancher/k3s/podium-kubeconfig.yaml",
    "kubernetes_kubeconfig_local": None,
    # How long the server may take to answer /readyz before agents join.
    "kubernetes_ready_timeout_s": 300,
}
