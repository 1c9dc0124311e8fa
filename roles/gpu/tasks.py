"""Role gpu, its verbs: deploy, check, remove."""

from io import StringIO

from pyinfra import host
from pyinfra.api import deploy as pyinfra_deploy
from pyinfra.facts.server import Command
from pyinfra.operations import apt, files, server, systemd
from pyinfra.operations.util import any_changed

from podium.files import files_for
from podium.pinned import node_versions, pinned_key
from roles import checks
from roles.gpu import repos
from roles.gpu.defaults import DEFAULTS
from roles.gpu.facts import NvidiaPci


def _node() -> repos.Node:
    probe = '. /etc/os-release; echo "$ID $VERSION_ID $(dpkg --print-architecture) $(uname -r)"'
    info = host.get_fact(Command, command=probe)
    words = (info or "").split()
    if len(words) != 4:
        # e.g. no VERSION_ID (Debian testing): the role cannot tell which repository fits.
        return repos.Node("unknown", (info or "").strip() or "?", "?", "?")
    return repos.Node(*words)


@pyinfra_deploy("gpu: deploy", data_defaults=DEFAULTS)
def deploy() -> None:
    settings = host.data.podium_gpu
    pci = host.get_fact(NvidiaPci)
    if not pci["gpus"]:
        # podium verify still fails such a node: it compares the count with the stack's.
        host.noop(
            f"no NVIDIA GPU on the PCI bus of {host.name} "
            f"(the stack expects {settings['expected_gpus']}); nothing to install"
        )
        return
    node = _node()
    defaults = {k: host.data.get(k) for k in DEFAULTS}
    table = node_versions()
    pins = table.components["gpu"].packages
    wanted = repos.packages(settings, node, pins)  # refuses impossible combinations first

    rendered = files_for("gpu", host.name, settings)
    changed = [
        files.put(name=f"Write {dest}", src=StringIO(rendered[name]), dest=dest, mode="644")
        for name, dest in host.data.gpu_files.items()
    ]
    files.directory(name="apt keyrings folder", path=host.data.gpu_keyrings, mode="755")
    # Each key is checked against its fingerprint in stacks/versions.yaml before apt trusts it:
    # whoever can change a file on the way (or on the mirror) must not choose the driver.
    apt.packages(name="Tools to fetch and check apt keys", packages=table.pinned("gpu", ["curl", "gpg"]),
                 update=True, cache_time=24 * 3600)
    fingerprints = table.components["gpu"].keys
    for keyring, url in repos.keys(settings, node, defaults).items():
        dest = f"{host.data.gpu_keyrings}/{keyring}"
        key = pinned_key(keyring, url, dest, fingerprints[keyring].fingerprint)
        if key is not None:
            changed.append(key)
    for name, content in repos.sources(settings, node, defaults).items():
        changed.append(files.put(name=f"apt source {name}", src=StringIO(content),
                                 dest=f"/etc/apt/sources.list.d/{name}", mode="644"))
    apt.update(name="Read the NVIDIA package lists", _if=any_changed(*changed))
    driver = apt.packages(name=f"NVIDIA driver {settings['driver_branch']} and tools", packages=wanted)
    server.shell(
        name="Load the NVIDIA driver",
        commands=[
            "nvidia-smi -L >/dev/null 2>&1 || modprobe nvidia || { lsmod | grep -q '^nouveau' && "
            f"echo 'nouveau holds the GPUs: reboot {host.name}, then run podium up again' >&2; exit 1; }}",
            "nvidia-smi -L",
        ],
        _if=driver.did_change,
    )
    if settings["persistence"]:
        systemd.service(
            name="NVIDIA persistence daemon", service="nvidia-persistenced", running=True, enabled=True
        )
    if settings["nvswitch"]:
        systemd.service(name="NVIDIA fabric manager (NVSwitch)", service="nvidia-fabricmanager",
                        running=True, enabled=True)


@pyinfra_deploy("gpu: check", data_defaults=DEFAULTS)
def check() -> None:
    checks.passes(name="The NVIDIA driver answers", commands=["nvidia-smi -L"],
                  proves="nvidia-smi -L lists the GPUs")


@pyinfra_deploy("gpu: remove", data_defaults=DEFAULTS)
def remove() -> None:
    # The driver itself stays: removing it from a running server takes its GPUs away mid-work.
    for dest in host.data.gpu_files.values():
        files.file(name=f"Remove {dest}", path=dest, present=False)
    server.shell(
        name="Remove Podium's NVIDIA apt sources and keys",
        commands=[f"rm -f /etc/apt/sources.list.d/podium-*.sources {host.data.gpu_keyrings}/podium-*.asc"],
    )
