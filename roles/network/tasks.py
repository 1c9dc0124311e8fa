"""Role network, its verbs: deploy, check, remove."""

import shlex
from io import StringIO
from typing import Any

from pyinfra import host
from pyinfra.api import deploy as pyinfra_deploy
from pyinfra.api.exceptions import DeployError
from pyinfra.facts.files import FindFiles
from pyinfra.facts.server import Command
from pyinfra.operations import files, server, systemd

from podium import network_files
from podium.files import files_for
from roles import checks
from roles.network.defaults import DEFAULTS

# Links are reapplied under the SSH connection that applies them: once this role changed
# something, `podium up` opens new connections for the components after it.
RESETS_CONNECTIONS = True


@pyinfra_deploy("network: deploy", data_defaults=DEFAULTS)
def deploy() -> None:
    settings = host.data.podium_network
    if settings["vlans"]:
        vlan_support = host.get_fact(
            Command,
            command="ip link add podium-vlan-probe type vlan id 1 link lo 2>&1; "
            "ip link del podium-vlan-probe 2>/dev/null; true",
        )
        if vlan_support and "Unknown device type" in vlan_support:
            raise DeployError(
                f"{host.name}: this kernel cannot create VLAN links (no 802.1Q support); "
                "load the 8021q module on the host or declare the network as a bridge"
            )
    settings = _own_interface(settings)
    rendered = files_for("network", host.name, settings)
    folder = host.data.network_dir
    changed = False
    for name, content in sorted(rendered.items()):
        op = files.put(name=f"Write {name}", src=StringIO(content), dest=f"{folder}/{name}", mode="644")
        changed = changed or op.will_change
    existing = (
        host.get_fact(FindFiles, path=folder, quote_path=True, fname=f"{host.data.network_prefix}-*") or []
    )
    for path in existing:
        if path.rsplit("/", 1)[-1] not in rendered:
            op = files.file(name=f"Remove {path}", path=path, present=False)
            changed = changed or op.will_change
    systemd.service(name="Run systemd-networkd", service="systemd-networkd", running=True, enabled=True)
    # Also apply when a declared link is missing: a run cut short after writing the files
    # must still converge on the next one.
    present = host.get_fact(Command, command="ip -o link show | cut -d: -f2 | cut -d@ -f1") or ""
    missing = [n for n in _links(rendered) if n not in present.split()]
    if changed or missing:
        # A reload applies new netdevs and reconfigures links without dropping the node's address.
        parents = sorted({v["parent"] for v in settings["vlans"]})
        if settings.get("parent_address"):
            parents = sorted({*parents, settings["parent_address"]["interface"]})
        # networkd can drop a D-Bus call on a starved machine ("Message recipient disconnected
        # from message bus without replying", seen with a host's load at 70): try twice more.
        reload = "networkctl reload || { sleep 2; networkctl reload; } || { sleep 5; networkctl reload; }"
        commands = [reload] + [f"networkctl reconfigure {shlex.quote(p)}" for p in parents]
        server.shell(name="Apply the network files", commands=commands)
    server.shell(
        name="Wait for declared links",
        commands=[f"networkctl status {shlex.quote(n)} >/dev/null" for n in _links(rendered)] or ["true"],
        _if=lambda: bool(changed or missing),
    )


def _own_interface(settings: dict[str, Any]) -> dict[str, Any]:
    """Settings with the node's own interface named: the stack's, or the one holding its address
    (host0 in the lab's containers, ens5 or eth1 under Vagrant, eno1 on bare metal)."""
    if not network_files.needs_interface(settings):
        return settings
    listed = host.get_fact(Command, command="ip -o -4 addr show") or ""
    found = network_files.interface_holding(settings["address"], listed)
    if found is None:
        raise DeployError(
            f"{host.name}: no interface holds the node's address {settings['address']}; "
            "name it in the stack as nodes[].interface"
        )
    return network_files.with_interface(settings, found)


def _links(rendered: dict[str, str]) -> list[str]:
    return [n.removeprefix("10-podium-").removesuffix(".netdev") for n in rendered if n.endswith(".netdev")]


@pyinfra_deploy("network: check", data_defaults=DEFAULTS)
def check() -> None:
    checks.passes(name="systemd-networkd runs", commands=["systemctl is-active systemd-networkd"],
                  proves="systemd-networkd active")


@pyinfra_deploy("network: remove", data_defaults=DEFAULTS)
def remove() -> None:
    server.shell(
        name="Remove Podium's network files and VLAN links",
        commands=[
            f"for f in {host.data.network_dir}/{host.data.network_prefix}-*.netdev; do "
            '[ -e "$f" ] || continue; '
            'ip link del "$(basename "$f" .netdev | sed s/^10-podium-//)" 2>/dev/null || true; done',
            f"rm -f {host.data.network_dir}/{host.data.network_prefix}-*",
            "networkctl reload",
        ],
    )
