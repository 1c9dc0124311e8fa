"""Reach a stack's node over SSH with the stack's own key and known_hosts: run, copy in, copy out."""

from __future__ import annotations

import shlex
import subprocess
from pathlib import Path

from podium.errors import PodiumError
from podium.secrets import StackSecrets
from podium.stack import Stack


class NodeShell:
    """Commands on one node of a stack, as `podium lab ssh` reaches it."""

    def __init__(self, stack: Stack, node: str) -> None:
        from podium.verify import ssh_config

        self.node = node
        self.config = ssh_config(stack, StackSecrets(stack.name))

    def run(self, command: str, *, check: bool = True, timeout: float = 120) -> str:
        """The command's stdout; PodiumError naming the node and its stderr when it fails."""
        done = subprocess.run(["ssh", "-F", str(self.config), self.node, command],
                              capture_output=True, text=True, timeout=timeout, check=False)
        if check and done.returncode:
            raise PodiumError(f"{self.node}: `{command[:80]}` failed ({done.returncode}): "
                              f"{done.stderr.strip()[-300:]}")
        return done.stdout

    def put(self, local: Path, remote: str) -> None:
        """Copy a file or folder onto the node (into `remote`, created if missing)."""
        self.run(f"mkdir -p {shlex.quote(remote)}")
        self._scp([str(local), f"{self.node}:{remote}/"])

    def get(self, remote: str, local: Path) -> Path:
        """Copy a file or folder from the node into the local folder `local`."""
        local.mkdir(parents=True, exist_ok=True)
        self._scp([f"{self.node}:{remote}", f"{local}/"])
        return local / Path(remote).name

    def _scp(self, args: list[str]) -> None:
        done = subprocess.run(["scp", "-q", "-r", "-F", str(self.config), *args],
                              capture_output=True, text=True, timeout=1800, check=False)
        if done.returncode:
            raise PodiumError(f"copying {args[0]} to {args[1]} failed: {done.stderr.strip()[-300:]}")
