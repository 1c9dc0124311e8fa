"""Defaults of role network; the plan's settings arrive as host data `podium_network`."""

DEFAULTS = {
    "network_dir": "/etc/systemd/network",
    # File names start low so they win over the distribution's defaults (80-container-host0).
    "network_prefix": "10-podium",
}
