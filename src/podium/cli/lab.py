"""`podium lab`: the whole appliance on this computer, in machines it creates and removes."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from podium.errors import InvalidInput
from podium.stack import load_stack

lab_app = typer.Typer(
    help="The appliance on this computer: machines, provisioning, verification.", no_args_is_help=True
)
out = Console(highlight=False)
err = Console(stderr=True, highlight=False)

StackArg = Annotated[str, typer.Argument(help="The lab's stack folder or stack.yaml.")]
Machines = Annotated[
    str | None, typer.Option("--machines", help="nspawn (default: containers) or libvirt (VMs).")
]


@lab_app.command("up")
def lab_up(
    stack: StackArg = "stacks/lab",
    machines: Machines = None,
    skip_verify: Annotated[bool, typer.Option("--skip-verify", help="Do not run podium verify.")] = False,
    online: Annotated[
        bool,
        typer.Option("--online", help="NAT the lab subnet out, proxy Debian's archive (default: neither)."),
    ] = False,
) -> None:
    """Start the stack's machines, provision them with `podium up`, verify, print how to call it.

    The machines reach only this computer and each other: a stack that declares
    `artifact_mirror: {bundle: PATH}` (stacks/lab does) gets its bundle built or brought up to
    date here, its image debootstrapped from it and its packages from its mirror node; other
    stacks take packages through this computer's package proxy. Time comes from its chronyd.
    --online keeps NAT to the outside, the package proxy and the image from Debian's archive.
    """
    from podium.drivers.pyinfra_runner import kept_connections
    from podium.lab import up as lab
    from podium.up import up
    from podium.verify import run_verify

    loaded = load_stack(stack)
    lab.reserve_network(loaded)
    lab.ensure_bundle(loaded, err)
    parts = lab.lab_parts(loaded, machines, online=online)
    lab.machines_up(parts, err)
    inventory = lab.write_lab_inventory(loaded)
    err.print(f"[green]✓[/] inventory: {inventory}")
    with kept_connections():
        result = up(loaded, console=err)
    out.print(f"changes: {result.changes}")
    if not skip_verify:
        outcomes = run_verify(loaded, [a for a in result.actions if a.action != "remove"])
        failed = [o for o in outcomes if not o.passed]
        for o in outcomes:
            mark = "[green]✓[/]" if o.passed else "[red]✗[/]"
            err.print(f"{mark} verify {o.component} on {o.host} ({o.tests} checks)")
            for failure in o.failures:
                err.print(f"    {failure}", markup=False)
        if failed:
            raise typer.Exit(1)
    lab.print_access(loaded, out)


@lab_app.command("down")
def lab_down(stack: StackArg = "stacks/lab", machines: Machines = None) -> None:
    """Remove every machine, overlay, namespace, bridge, NAT rule and host service the lab created."""
    from podium.lab import up as lab

    loaded = load_stack(stack)
    lab.lab_down(loaded, err, machines)


@lab_app.command("ssh")
def lab_ssh(
    node: Annotated[str, typer.Argument(help="A node of the lab, e.g. node1.")],
    stack: Annotated[str, typer.Option("--stack", help="The lab's stack.")] = "stacks/lab",
    command: Annotated[list[str] | None, typer.Argument(help="A command to run instead of a shell.")] = None,
) -> None:
    """Open a shell (or run a command) on a lab machine with the lab's key and known_hosts."""
    from podium.secrets import StackSecrets
    from podium.verify import ssh_config

    loaded = load_stack(stack)
    if node not in loaded.node_names:
        raise InvalidInput(f"node {node}: not in {loaded.name}; nodes: {', '.join(loaded.node_names)}")
    config = ssh_config(loaded, StackSecrets(loaded.name))
    os.execvp("ssh", ["ssh", "-F", str(config), node, *(command or [])])


@lab_app.command("image")
def lab_image(force: Annotated[bool, typer.Option("--force", help="Build again.")] = False) -> None:
    """Build (once, cached by recipe) the Debian 12 image lab machines boot from."""
    from podium.lab.image import build_rootfs

    out.print(str(build_rootfs(force=force, console=err)))


@lab_app.command("box")
def lab_box(
    out_file: Annotated[Path, typer.Option("--out", help="The .box file to write.")] = Path(
        "build/podium-debian12.box"
    ),
    stack: Annotated[str, typer.Option("--stack", help="Whose SSH key root accepts.")] = "stacks/lab",
) -> None:
    """Pack a vagrant-libvirt box from the lab's VM image; root accepts the stack's SSH key."""
    from podium.lab.box import pack_box
    from podium.secrets import StackSecrets

    loaded = load_stack(stack)
    out.print(str(pack_box(out_file, authorized_key=StackSecrets(loaded.name).ssh_public_key)))


@lab_app.command("trust")
def lab_trust(stack: StackArg = "stacks/lab") -> None:
    """Record the host keys of machines something else booted (Vagrant, bare metal) in the stack's known_hosts.

    Trust on first use, as Vagrant itself does; machines `podium lab up` boots need no such step:
    their keys are made on this computer before they boot."""
    import subprocess

    from podium.secrets import StackSecrets
    from podium.up import require_machines

    loaded = load_stack(stack)
    require_machines(loaded)
    entries: dict[str, list[str]] = {}
    for node in loaded.nodes:
        port = str(node.ssh.port)
        scan = subprocess.run(
            ["ssh-keyscan", "-T", "10", "-p", port, "-t", "ed25519,ecdsa,rsa", str(node.address)],
            capture_output=True,
            text=True,
        )
        keys = [" ".join(line.split()[1:]) for line in scan.stdout.splitlines() if line and not line.startswith("#")]
        if not keys:
            raise InvalidInput(f"node {node.name} ({node.address}:{port}) offered no SSH host key; is it up?")
        # ssh looks a host on another port up as [address]:port.
        entries[str(node.address) if port == "22" else f"[{node.address}]:{port}"] = keys
    StackSecrets(loaded.name).write_known_hosts(entries)
    out.print(f"trusted {len(entries)} machines of {loaded.name}")


def register(app: typer.Typer) -> None:
    app.add_typer(lab_app, name="lab")
