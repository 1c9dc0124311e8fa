"""Defaults of role base; the plan's settings arrive as host data `podium_base`."""

# apt's daily timers refresh the package lists and install upgrades from the node's sources on
# their own schedule; on an appliance apt runs only when `podium up` runs it, so they are masked,
# and unattended-upgrades with them (installed now or later).
APT_TIMERS = ("apt-daily.timer", "apt-daily-upgrade.timer", "unattended-upgrades.service")

DEFAULTS = {
    "base_packages": ["chrony", "nftables", "openssh-server", "sudo", "curl", "ca-certificates"],
    "base_sshd_dropin": "/etc/ssh/sshd_config.d/podium.conf",
    "base_nftables_conf": "/etc/nftables.conf",
    "base_chrony_conf": "/etc/chrony/chrony.conf",
    # Public keys allowed to log in as the admin user (the stack's own key in the lab).
    "podium_admin_keys": [],
}
