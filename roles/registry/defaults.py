"""Defaults of role registry; the plan's settings arrive as host data `podium_registry`."""

DEFAULTS = {
    "registry_config": "/etc/docker/registry/config.yml",
    "registry_dropin": "/etc/systemd/system/docker-registry.service.d/podium.conf",
    # TLS certificate, key and the two htpasswd files nginx reads.
    "registry_etc": "/etc/podium/registry",
    "registry_nginx_site": "/etc/nginx/conf.d/podium-registry.conf",
    # bcrypt cost of the htpasswd entries. nginx checks the password on every request (a push
    # is dozens), and the passwords are 256-bit random tokens no cost factor protects further.
    "registry_bcrypt_rounds": 5,
}
