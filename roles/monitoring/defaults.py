"""Defaults of role monitoring; the plan's settings arrive as host data `podium_monitoring`."""

DEFAULTS = {
    # Debian's packages, pinned to the versions in stacks/versions.yaml at deploy time.
    "monitoring_node_packages": ["prometheus-node-exporter"],
    "monitoring_server_packages": ["prometheus", "prometheus-alertmanager"],
    # NVIDIA's DCGM (host engine) comes from the NVIDIA repository the gpu role sets up.
    "monitoring_dcgm_packages": ["datacenter-gpu-manager"],
    # Where Grafana's repository keeps its signing key, relative to the repository URL.
    "monitoring_grafana_key": "gpg.key",
}
