"""pyinfra inventories from a stack: host connection data plus each role's settings."""

from __future__ import annotations

import pprint
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from podium.plan.actions import Action
from podium.secrets import StackSecrets
from podium.stack.model import Stack

HostEntry = tuple[str, dict[str, Any]]


def connection(stack: Stack, node_name: str, secrets: StackSecrets | None = None) -> dict[str, Any]:
    """How pyinfra and testinfra reach a node: its address, user, key and a strict known_hosts."""
    secrets = secrets or StackSecrets(stack.name)
    node = stack.node(node_name)
    key = Path(node.ssh.key).expanduser() if node.ssh.key else secrets.ssh_key
    public = Path(f"{key}.pub")
    return {
        "ssh_hostname": str(node.address),
        "ssh_user": node.ssh.user,
        "ssh_port": node.ssh.port,
        "ssh_key": str(key),
        "ssh_known_hosts_file": str(secrets.known_hosts),
        "ssh_strict_host_key_checking": "yes",
        "podium_stack": stack.name,
        "podium_node": node_name,
        "podium_admin_keys": [public.read_text(encoding="utf-8").strip()] if public.exists() else [],
        # The bundle on this control machine, read by the roles that ship or install from it; a
        # path, so it stays out of the settings whose hash decides what is reconfigured.
        "podium_bundle": str(stack.bundle_folder) if stack.bundle_folder else None,
    }


def host_entries(stack: Stack, actions: Sequence[Action]) -> list[HostEntry]:
    """One entry per node, with `podium_<role>` settings for each component placed there."""
    secrets = StackSecrets(stack.name)
    entries: dict[str, dict[str, Any]] = {n: connection(stack, n, secrets) for n in stack.node_names}
    for action in actions:
        if action.action != "remove":
            role = action.component.replace("-", "_")
            entries[action.host][f"podium_{role}"] = dict(action.settings)
            entries[action.host][f"podium_{role}_version"] = action.to_version
    return list(entries.items())


def groups(actions: Sequence[Action]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for action in actions:
        if action.action != "remove":
            hosts = out.setdefault(action.component.replace("-", "_"), [])
            if action.host not in hosts:
                hosts.append(action.host)
    return out


def render_inventory(stack: Stack, actions: Sequence[Action]) -> str:
    """A pyinfra inventory file: `pyinfra inventory/<stack>.py roles/<role>/deploy.py` works."""
    entries = dict(host_entries(stack, actions))
    lines = [
        f'"""pyinfra inventory for stack {stack.name}, written by `podium` from its stack.yaml."""',
        "",
    ]
    for group, hosts in groups(actions).items():
        items = ",\n".join(
            f"    ({name!r}, {pprint.pformat(entries[name], width=90, sort_dicts=True)})" for name in hosts
        )
        lines.append(f"{group} = [\n{items},\n]\n")
    return "\n".join(lines)


def write_inventory(stack: Stack, actions: Sequence[Action], path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render_inventory(stack, actions), encoding="utf-8")
    return path
