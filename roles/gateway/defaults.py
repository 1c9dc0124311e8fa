"""Defaults of role gateway; the plan's settings arrive as host data `podium_gateway`."""

DEFAULTS = {
    "gateway_prefix": "/opt/podium/gateway",
    "gateway_etc": "/etc/podium/gateway",
    "gateway_data": "/var/lib/podium/gateway",
    "gateway_user": "podium-gateway",
}
