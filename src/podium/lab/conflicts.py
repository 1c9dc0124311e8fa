"""Refuse a lab whose subnet or bridge another lab, link or route on this computer already holds."""

from __future__ import annotations

import ipaddress
from pathlib import Path

from podium.commands import run_tool
from podium.drivers.base import LabNetwork
from podium.errors import InvalidInput
from podium.lab.network import bridge_name

# Words `ip route` may put before the destination (the route's type).
ROUTE_TYPES = {"unicast", "local", "broadcast", "multicast", "blackhole", "unreachable", "prohibit",
               "throw", "nat"}
OWNER_FILE = "stack-file"


def check_network_free(network: LabNetwork, stack_file: Path, lab_state: Path) -> None:
    """Refuse, before anything is created, a lab that would share its subnet or bridge.

    A second lab on a subnet already routed on this computer takes traffic from the first
    (two bridges, one route wins) and, on the same bridge, its `lab down` removes the first.
    The lab's own bridge (a re-run of `lab up` for the same stack) is not a conflict.

    stack_file: the stack.yaml this lab comes from; recorded in `lab_state`/<lab>/ so that a
        different stack with the same name is told apart from a re-run.
    """
    bridge = bridge_name(network.lab)
    if _link_exists(bridge):
        check_holder(network, stack_file, lab_state)
    subnet = ipaddress.IPv4Network(network.subnet)
    for holder, used in _addresses() + _routes():
        if holder == bridge or not used.overlaps(subnet):
            continue
        raise InvalidInput(
            f"stack {stack_file}: host_network subnet {subnet} of lab {network.lab!r} overlaps "
            f"{used}, already in use on this computer by {_describe(holder)}; give "
            "host_network a free subnet and gateway (e.g. another 10.x.y.0/24), or remove "
            "what holds it first"
        )


def check_holder(network: LabNetwork, stack_file: Path, lab_state: Path) -> None:
    """Refuse when the lab of this name was brought up from another stack file."""
    owner = lab_state / network.lab / OWNER_FILE
    held_by = owner.read_text(encoding="utf-8").strip() if owner.exists() else ""
    if held_by and held_by != str(stack_file):
        raise InvalidInput(
            f"stack {stack_file}: lab name {network.lab!r} (bridge {bridge_name(network.lab)}) "
            f"is held by the lab of {held_by}; give this stack another name:, or use "
            f"{Path(held_by).parent} for `podium lab up/down` (if that stack moved, delete {owner})"
        )


def claim(network: LabNetwork, stack_file: Path, lab_state: Path) -> None:
    """Record which stack file this lab's name and bridge belong to."""
    folder = lab_state / network.lab
    folder.mkdir(parents=True, exist_ok=True)
    (folder / OWNER_FILE).write_text(f"{stack_file}\n", encoding="utf-8")


def release(network: LabNetwork, lab_state: Path) -> None:
    """Forget the claim once the lab is removed."""
    (lab_state / network.lab / OWNER_FILE).unlink(missing_ok=True)


def _describe(link: str) -> str:
    if not link:
        return "a route with no link (blackhole, unreachable or prohibit)"
    if link.startswith("pdm-"):
        return f"lab {link.removeprefix('pdm-')!r} (bridge {link}; `podium lab down` its stack)"
    return f"link {link}"


def _addresses() -> list[tuple[str, ipaddress.IPv4Network]]:
    """(link, network) for every IPv4 address on this computer's links."""
    out = run_tool(["ip", "-o", "-4", "addr", "show"]).stdout
    found = []
    for line in out.splitlines():
        # "7: pdm-lab    inet 10.77.0.1/24 brd 10.77.0.255 scope global pdm-lab\ ..."
        fields = line.split()
        if len(fields) >= 4 and fields[2] == "inet":
            link = fields[1].split("@")[0]
            found.append((link, ipaddress.IPv4Network(fields[3], strict=False)))
    return found


def _routes() -> list[tuple[str, ipaddress.IPv4Network]]:
    """(link, destination) for every IPv4 route of the main table except the default."""
    out = run_tool(["ip", "-o", "-4", "route", "show"]).stdout
    found = []
    for line in out.splitlines():
        # "10.77.0.0/24 dev pdm-lab proto kernel scope link src 10.77.0.1", "blackhole 10.9.0.0/16"
        fields = line.split()
        if fields and fields[0] in ROUTE_TYPES:
            fields = fields[1:]
        if not fields or fields[0] == "default":
            continue
        try:
            destination = ipaddress.IPv4Network(fields[0], strict=False)
        except ValueError:
            continue
        link = fields[fields.index("dev") + 1] if "dev" in fields else ""
        found.append((link, destination))
    return found


def _link_exists(name: str) -> bool:
    return run_tool(["ip", "link", "show", "dev", name], check=False).returncode == 0
