"""Where libvirt VMs run and the daemons that run them: the domain type that boots here, and
libvirtd started where PID 1 does not start it."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from podium.errors import InvalidInput, PodiumError

DEFAULT_URI = "qemu:///system"
# kvm or qemu (TCG); the same variable picks vagrant-libvirt's driver in the Vagrantfile.
DOMAIN_TYPE_ENV = "PODIUM_LIBVIRT_DRIVER"


def is_local(uri: str) -> bool:
    """True when `uri` names the hypervisor on this machine (no host, or localhost)."""
    return urlparse(uri).hostname in (None, "", "localhost", "127.0.0.1")


def domain_type(uri: str = DEFAULT_URI, override: str | None = None) -> str:
    """`kvm` where guests really boot under KVM, `qemu` (TCG emulation) otherwise.

    An explicit `override` or $PODIUM_LIBVIRT_DRIVER wins. Remote hypervisors
    are assumed to run KVM. Locally, /dev/kvm is not enough: a kvm_pvm host
    (a microVM's paravirtual KVM) offers it, but stock guest kernels hang there.
    """
    choice = override or os.environ.get(DOMAIN_TYPE_ENV)
    if choice:
        if choice not in ("kvm", "qemu"):
            raise InvalidInput(
                f"libvirt domain type {choice!r} (from {DOMAIN_TYPE_ENV} or the driver) is not "
                "allowed; use kvm or qemu."
            )
        return choice
    if not is_local(uri):
        return "kvm"
    if Path("/sys/module/kvm_pvm").exists() or not Path("/dev/kvm").exists():
        return "qemu"
    return "kvm"


# libvirtd's parent where Podium starts it: a child subreaper that reaps every
# orphan below it. Where PID 1 reaps nothing (some container and microVM
# inits), each QEMU that libvirtd probes and kills stays a zombie, libvirtd
# waits out its kill timeout on it, and defining one domain takes 80 s.
SUBREAPER = """\
import ctypes, os, subprocess, sys
ctypes.CDLL(None, use_errno=True).prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER
child = subprocess.Popen(sys.argv[1:])
while os.wait()[0] != child.pid:
    pass
"""


def ensure_libvirtd(uri: str = DEFAULT_URI, timeout: float = 30.0) -> None:
    """Start virtlogd and libvirtd here when `uri` is local and nothing answers on it.

    Hosts whose PID 1 is not systemd (containers, microVMs) have no socket
    activation, so the daemons are started directly: virtlogd as a daemon,
    libvirtd in the foreground under SUBREAPER, detached from this process.
    """
    if not is_local(uri) or _answers(uri):
        return
    if os.geteuid() != 0:
        raise PodiumError(f"libvirtd does not answer on {uri}; start it, or run as root.")
    for daemon in ("virtlogd", "libvirtd"):
        if shutil.which(daemon) is None:
            raise PodiumError(
                f"{daemon} is not installed; install it with "
                "`apt-get install -y libvirt-daemon-system qemu-system-x86`."
            )
    if not _daemon_running("virtlogd"):
        subprocess.run(["virtlogd", "--daemon"], capture_output=True)
    if not _daemon_running("libvirtd"):
        # setsid --fork: the supervisor outlives this process and belongs to no terminal.
        subprocess.run(
            ["setsid", "--fork", sys.executable, "-c", SUBREAPER, "libvirtd"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
    deadline = time.monotonic() + timeout
    while not _answers(uri):
        if time.monotonic() > deadline:
            raise PodiumError(f"libvirtd did not answer on {uri} within {timeout:.0f} s.")
        time.sleep(0.2)



def libvirt_module() -> Any:
    try:
        import libvirt
    except ImportError:
        raise PodiumError(
            "The libvirt machines driver needs libvirt-python; install it with "
            "`pip install 'podium[libvirt]'` (it builds against libvirt-dev and pkg-config)."
        ) from None
    # libvirt prints every error to stderr by default; Podium reports them itself.
    libvirt.registerErrorHandler(lambda _ctx, _err: None, None)
    return libvirt


def _answers(uri: str) -> bool:
    libvirt = libvirt_module()
    try:
        libvirt.open(uri).close()
    except libvirt.libvirtError:
        return False
    return True


def _daemon_running(daemon: str) -> bool:
    try:
        pid = int(Path(f"/run/{daemon}.pid").read_text())
        return Path(f"/proc/{pid}/comm").read_text().strip() == daemon
    except (OSError, ValueError):
        return False
