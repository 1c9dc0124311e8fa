"""The lines `podium lab up` ends with: gateway URL, its gRPC address, a freshly created API key,
the CA to trust, and a curl line that works as printed."""

from __future__ import annotations

import time

from rich.console import Console

from podium.gateway_access import admin_api, gateway_url
from podium.registry.ca import ca_certificate
from podium.services.gateway.keys import KeySpec
from podium.stack.model import Stack


def print_gateway_access(stack: Stack, out: Console) -> None:
    url = gateway_url(stack)
    name = f"lab-{time.strftime('%Y%m%d-%H%M%S')}"
    key = admin_api(stack.name, url).create_key(KeySpec(name=name))["key"]
    ca = ca_certificate(stack.name)
    llms = [m.name for m in stack.models if m.format in ("gguf", "safetensors")]
    out.print(f"gateway: {url}/v1", soft_wrap=True)
    gw = stack.gateway
    assert gw is not None  # gateway_url refused a stack without one
    node = gw.nodes[0]
    # The gRPC listener's certificate names the node, not its address (see grpc_tls).
    out.print(f"grpc: {stack.node(node).address}:{gw.grpc_listen_port}", soft_wrap=True)
    if gw.tls:
        out.print(f"grpc-tls-name: {node}", soft_wrap=True)
    out.print(f"key: {key}", soft_wrap=True)
    out.print(f"ca: {ca}", soft_wrap=True)
    if llms:
        body = f'{{"model": "{llms[0]}", "messages": [{{"role": "user", "content": "Hello"}}], "max_tokens": 16}}'
        out.print(
            f"try: curl --cacert {ca} -H 'Authorization: Bearer {key}' -H 'Content-Type: application/json' "
            f"-d '{body}' {url}/v1/chat/completions",
            soft_wrap=True,
            markup=False,
        )
