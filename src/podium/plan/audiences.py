"""Who may reach what: the addresses each kind of client a listener names stands for."""

from __future__ import annotations

from ipaddress import IPv4Network

from podium.errors import InvalidInput
from podium.stack.model import Stack


def audiences(stack: Stack) -> dict[str, list[str]]:
    """Addresses allowed in for each kind of client a listener names."""

    def addresses(names: list[str]) -> list[str]:
        return sorted(str(stack.node(n).address) for n in names)

    admin = [source_address(stack, s) for s in stack.network.admin_sources]
    if not admin:
        if stack.host_network is None:
            # Validation refuses this already; the plan fails closed too rather than open SSH
            # and the admin ports to everyone for a stack that reached it some other way.
            raise InvalidInput(
                f"stack {stack.name!r}: network.admin_sources is required when the stack has no"
                " host_network; name the subnets or nodes administrators connect from"
            )
        admin = [str(stack.host_network.gateway)]
    return {
        "any": [],
        "stack": addresses(stack.node_names),
        "admin": admin,
        "gateway": addresses(stack.gateway.nodes) if stack.gateway else [],
        "monitoring": addresses([stack.monitoring.node]) if stack.monitoring else [],
    }


def source_address(stack: Stack, source: str) -> str:
    if source in stack.node_names:
        return str(stack.node(source).address)
    return str(IPv4Network(source, strict=False))
