"""Defaults of role mirror; the plan's settings arrive as host data `podium_mirror`."""

from podium.plan.mirror_settings import MIRROR_ETC, MIRROR_ROOT

DEFAULTS = {
    "mirror_nginx_site": "/etc/nginx/conf.d/podium-mirror.conf",
    # apt's lists of the bundle as laid on the node, apart from the node's own lists.
    "mirror_apt_lists": "/var/lib/podium/mirror-apt-lists",
    "mirror_root": MIRROR_ROOT,
    "mirror_etc": MIRROR_ETC,
}
