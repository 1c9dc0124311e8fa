"""The lines `podium lab up` ends with: gateway URL, a fresh API key, the CA to trust."""

from __future__ import annotations

from rich.console import Console

from podium.stack.model import Stack


def print_gateway_access(stack: Stack, out: Console) -> None:
    gw = stack.gateway
    assert gw is not None
    node = stack.node(gw.nodes[0])
    scheme = "https" if gw.tls else "http"
    out.print(f"gateway: {scheme}://{node.address}:{gw.port}/v1")
