"""Defaults of role store; the plan's settings arrive as host data `podium_store`."""

DEFAULTS = {
    # The TLS certificate and key (signed by the stack CA) and the account's SQL.
    "store_etc": "/etc/podium/store",
    # Debian's cluster of the pinned PostgreSQL major version, made when the package installs.
    "store_cluster": "15/main",
    "store_dumps": "/var/backups/podium-store",
}
