"""Checks as facts: the roles' check verbs, where a healthy node reports no change (host.noop) and
only a failing check runs anything, an operation that fails with what it found; and the cheap
facts that let a deploy skip an operation whose own facts are slow."""

import shlex
from collections.abc import Generator

from pyinfra import host
from pyinfra.api import operation
from pyinfra.facts.server import Command

# Written last into a venv by its install, naming what it was installed from: a run cut short
# installs again, an unchanged venv is left alone without a check that counts as a change.
VENV_MARK = ".podium-ready"
# The exit status is printed last, so a command's own output never hides whether it passed.
STATUS = "podium-check-status="


def outcome(commands: list[str]) -> tuple[bool, str]:
    """Run `commands` in order on the host (as a fact); passed, and the output of the first that
    failed (else of the last)."""
    script = " && ".join(f"{{ {c}; }}" for c in commands) or "true"
    text = host.get_fact(Command, command=f"( {script} ) 2>&1; echo {STATUS}$?") or ""
    output, _, status = text.rpartition(STATUS)
    return status.strip() == "0", output.strip()


@operation()
def passes(commands: list[str], proves: str) -> Generator[str, None, None]:
    """A check: nothing to do when every command exits 0; else fail naming what it proves.

    + commands: shell commands that all exit 0 on a healthy node
    + proves: what passing means, e.g. "the gateway runs"

    **Example:**

    .. code:: python

        passes(name="Gateway runs", commands=["systemctl is-active podium-gateway"],
               proves="podium-gateway is active")
    """
    ok, output = outcome(commands)
    if ok:
        host.noop(proves)
        return
    detail = f": {output.splitlines()[-1]}" if output else ""
    yield f"echo {shlex.quote(f'check failed, expected {proves}{detail}')} >&2; exit 1"


def user_as_declared(user: str, group: str, home: str, shell: str) -> bool:
    """Whether `user` exists with this primary group, home (present) and shell, in one command:
    server.user reads every account and group of the node to find out (a third of a second)."""
    quoted = shlex.quote(user)
    text = host.get_fact(
        Command,
        command=f"getent passwd {quoted} | cut -d: -f6,7; id -gn {quoted} 2>/dev/null; "
        f"test -d {shlex.quote(home)} && echo home-present || true",
    )
    return (text or "").split() == [f"{home}:{shell}", group, "home-present"]


def output(command: str) -> str:
    """What `command` prints on the node, stripped; empty where it fails or prints nothing."""
    return str(host.get_fact(Command, command=f"{command} 2>/dev/null || true") or "").strip()


def venv_mark(venv: str) -> str:
    """What the venv at `venv` was last installed from; empty when its install never finished."""
    return output(f"cat {venv}/{VENV_MARK}")
