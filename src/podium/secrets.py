"""Secrets Podium generates for a stack (SSH key, tokens, passwords), kept 0600 on the control
machine under one folder per stack and never printed unless a command exists to show them."""

from __future__ import annotations

import os
import secrets
import subprocess
from pathlib import Path

from podium.errors import PodiumError


def state_root() -> Path:
    return Path(os.environ.get("PODIUM_STATE_DIR", "/var/lib/podium/stacks"))


class StackSecrets:
    def __init__(self, stack: str, root: Path | None = None) -> None:
        self.folder = (root or state_root()) / stack

    def _ensure_folder(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        os.chmod(self.folder, 0o700)

    @property
    def ssh_key(self) -> Path:
        """The stack's own SSH key for nodes that do not name one (the lab's machines)."""
        key = self.folder / "ssh" / "id_ed25519"
        if not key.exists():
            self._ensure_folder()
            key.parent.mkdir(mode=0o700, exist_ok=True)
            result = subprocess.run(
                [
                    "ssh-keygen",
                    "-q",
                    "-t",
                    "ed25519",
                    "-N",
                    "",
                    "-C",
                    f"podium@{self.folder.name}",
                    "-f",
                    str(key),
                ],
                capture_output=True,
                text=True,
            )
            if result.returncode != 0:
                raise PodiumError(f"could not create the stack's SSH key {key}: {result.stderr.strip()}")
        return key

    @property
    def ssh_public_key(self) -> str:
        return Path(f"{self.ssh_key}.pub").read_text(encoding="utf-8").strip()

    @property
    def known_hosts(self) -> Path:
        """A known_hosts of the stack's own, so Podium never reads or writes ~/.ssh."""
        path = self.folder / "known_hosts"
        if not path.exists():
            self._ensure_folder()
            path.touch(mode=0o600)
        return path

    def write_known_hosts(self, entries: dict[str, list[str]]) -> None:
        """entries: address → host key lines ("ssh-ed25519 AAAA...")."""
        lines = [f"{addr} {key}" for addr, keys in sorted(entries.items()) for key in keys]
        self.write_private(self.known_hosts, "\n".join(lines) + "\n")

    def token(self, name: str, nbytes: int = 32) -> str:
        """A named random secret, made once and kept 0600."""
        path = self.folder / "secrets" / name
        if not path.exists():
            self._ensure_folder()
            path.parent.mkdir(mode=0o700, exist_ok=True)
            self.write_private(path, secrets.token_urlsafe(nbytes))
        return path.read_text(encoding="utf-8").strip()

    def path(self, name: str) -> Path:
        self._ensure_folder()
        return self.folder / name

    @staticmethod
    def write_private(path: Path, content: str) -> None:
        """Write `content` to `path` whole (a reader sees the old file or the new), 0600."""
        tmp = path.with_suffix(path.suffix + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(content)
        os.replace(tmp, path)
