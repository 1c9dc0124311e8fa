"""The registry's htpasswd files, from the stack's two accounts: bcrypt hashes, kept as they are
on the node while they still match, so a deploy that changed nothing writes nothing."""

from __future__ import annotations

from collections.abc import Sequence

import bcrypt

from podium.registry.access import Credential


def parse(text: str) -> dict[str, str]:
    """user → hash of an htpasswd file."""
    out = {}
    for line in text.splitlines():
        user, sep, hashed = line.strip().partition(":")
        if sep and user and not user.startswith("#"):
            out[user] = hashed
    return out


def htpasswd(accounts: Sequence[Credential], existing: str = "", rounds: int = 5) -> str:
    """An htpasswd file holding exactly `accounts`; a hash from `existing` that still matches
    its account's password is reused."""
    old = parse(existing)
    lines = []
    for account in accounts:
        password = account.password.encode()
        hashed = old.get(account.user, "")
        if not (hashed.startswith("$2") and _matches(password, hashed)):
            hashed = bcrypt.hashpw(password, bcrypt.gensalt(rounds)).decode()
        lines.append(f"{account.user}:{hashed}")
    return "\n".join(lines) + "\n"


def _matches(password: bytes, hashed: str) -> bool:
    try:
        return bcrypt.checkpw(password, hashed.encode())
    except ValueError:  # not a bcrypt hash after all
        return False
