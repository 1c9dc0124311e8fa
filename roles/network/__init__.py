"""Role network: systemd-networkd VLANs, bridges and MTU."""
