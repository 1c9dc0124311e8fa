"""How the control machine and the nodes reach a stack's registry: its address, the CA that
signed its certificate and its two accounts (push and pull-only), all kept on the control machine."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from podium.errors import InvalidInput
from podium.registry.ca import ca_certificate
from podium.secrets import StackSecrets

if TYPE_CHECKING:
    from podium.registry.client import Registry
    from podium.stack.model import Stack

PUSH_USER = "podium-push"
PULL_USER = "podium-pull"


@dataclass(frozen=True)
class Credential:
    """One htpasswd account of the registry; the password never shows in a repr or a log."""

    user: str
    password: str = field(repr=False)


def push_credential(stack: str) -> Credential:
    """The account that may push, tag and delete (used by `podium up` on the control machine)."""
    return Credential(PUSH_USER, StackSecrets(stack).token("registry-push"))


def pull_credential(stack: str) -> Credential:
    """The read-only account engines pull models with on their nodes."""
    return Credential(PULL_USER, StackSecrets(stack).token("registry-pull"))


def registry_address(stack: Stack) -> str:
    """HOST:PORT of the stack's registry: its node's address and the declared port."""
    if stack.registry is None:
        raise InvalidInput(
            f"stack {stack.name!r} declares no registry; add a `registry:` section to its stack.yaml"
        )
    return f"{stack.node(stack.registry.node).address}:{stack.registry.port}"


def registry_url(stack: Stack) -> str:
    """https://HOST:PORT (http:// when the stack sets registry.tls: false)."""
    scheme = "https" if stack.registry is not None and stack.registry.tls else "http"
    return f"{scheme}://{registry_address(stack)}"


def registry_ca(stack: str) -> Path:
    """The stack CA's certificate (PEM) on the control machine; nodes have it as
    /usr/local/share/ca-certificates/podium-<stack>.crt in their trust store."""
    return ca_certificate(stack)


def stack_registry(stack: Stack, credential: Credential) -> Registry:
    """A client of the stack's registry that checks its certificate against the stack CA."""
    from podium.registry.client import Registry

    tls = stack.registry is not None and stack.registry.tls
    return Registry(
        registry_address(stack),
        insecure=not tls,
        ca=registry_ca(stack.name) if tls else None,
        user=credential.user,
        password=credential.password,
    )
