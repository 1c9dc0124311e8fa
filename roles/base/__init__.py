"""Role base: hostname, /etc/hosts, time sync, admin access, SSH hardening, firewall."""
