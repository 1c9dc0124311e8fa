"""The lab's package path: an nginx of the lab's own on the lab gateway that passes the nodes'
apt requests on to Debian's archive, so the nodes need no route, NAT or name resolution out.

nginx rather than apt-cacher-ng: it is already what serves artifacts on the control node, it
comes with the host's web tooling, and its config names the one upstream it will pass on to,
so the nodes get Debian's archive and nothing else (a forward proxy would be a way out)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

from podium.drivers.base import LabNetwork
from podium.errors import PodiumError
from podium.lab.network import APT_PORT

LAB_STATE = Path("/var/lib/podium/lab")
DEBIAN_ARCHIVE = "deb.debian.org"


def proxy_folder(network: LabNetwork) -> Path:
    return LAB_STATE / network.lab / "apt-proxy"


def nginx_conf(network: LabNetwork, folder: Path) -> str:
    temp = folder / "tmp"
    return f"""\
# The lab's package path (written by podium lab up): Debian's archive for the lab subnet only.
daemon on;
worker_processes 1;
pid {folder / "nginx.pid"};
error_log {folder / "error.log"};
events {{ worker_connections 256; }}
http {{
    access_log {folder / "access.log"};
    client_body_temp_path {temp / "body"};
    proxy_temp_path {temp / "proxy"};
    fastcgi_temp_path {temp / "fastcgi"};
    uwsgi_temp_path {temp / "uwsgi"};
    scgi_temp_path {temp / "scgi"};
    server {{
        listen {network.gateway}:{APT_PORT};
        allow {network.subnet};
        deny all;
        location /debian/ {{
            proxy_pass http://{DEBIAN_ARCHIVE}/debian/;
            proxy_set_header Host {DEBIAN_ARCHIVE};
            # Debian's CDN answers HTTP/1.0 with 426.
            proxy_http_version 1.1;
        }}
        location / {{
            return 403;
        }}
    }}
}}
"""


def start_apt_proxy(network: LabNetwork) -> None:
    """Start the lab's package proxy on the gateway address; nothing if it already runs."""
    folder = proxy_folder(network)
    pidfile = folder / "nginx.pid"
    if pid_alive(pidfile):
        return
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    if not Path(nginx).exists():
        raise PodiumError(
            "nginx is missing on this computer; apt-get install nginx (the lab's package path)"
        )
    (folder / "tmp").mkdir(parents=True, exist_ok=True)
    conf = folder / "nginx.conf"
    conf.write_text(nginx_conf(network, folder), encoding="utf-8")
    started = subprocess.run(
        [nginx, "-c", str(conf), "-p", str(folder), "-e", str(folder / "error.log")],
        capture_output=True,
        text=True,
    )
    if started.returncode != 0:
        raise PodiumError(
            f"the lab's package proxy on {network.gateway}:{APT_PORT} did not start: "
            f"{started.stderr.strip().splitlines()[-1] if started.stderr.strip() else 'no output'}"
        )


def stop_apt_proxy(network: LabNetwork) -> None:
    """Stop the lab's package proxy, wait for it to go, and remove its folder."""
    folder = proxy_folder(network)
    pidfile = folder / "nginx.pid"
    if pid_alive(pidfile):
        pid = int(pidfile.read_text().strip())
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and _running(pid):
            time.sleep(0.1)
    shutil.rmtree(folder, ignore_errors=True)


def pid_alive(pidfile: Path) -> bool:
    """Whether the process whose id `pidfile` holds is still there."""
    try:
        return _running(int(pidfile.read_text().strip()))
    except (OSError, ValueError):
        return False


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    return True
