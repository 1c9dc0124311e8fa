"""The lines `podium lab up` ends with: gateway URL, its gRPC address, the operator console, a
freshly created API key, the CA to trust, and a curl line that works as printed."""

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
    for line in access_lines(stack, key, str(ca_certificate(stack.name))):
        out.print(line, soft_wrap=True, markup=False)


def access_lines(stack: Stack, key: str, ca: str) -> list[str]:
    """What the lab host needs to call the gateway and open its console, one line each."""
    url = gateway_url(stack)
    gw = stack.gateway
    assert gw is not None  # gateway_url refused a stack without one
    node = gw.nodes[0]
    lines = [f"gateway: {url}/v1",
             # The gRPC listener's certificate names the node, not its address (see grpc_tls).
             f"grpc: {stack.node(node).address}:{gw.grpc_listen_port}"]
    if gw.tls:
        lines.append(f"grpc-tls-name: {node}")
        # The lab host is the lab's admin source, the only client the console answers.
        lines.append(f"console: {url}/console/")
    else:
        # A browser keeps the console's Secure session cookie over HTTPS only.
        lines.append(f"console: pages need gateway.tls; JSON twins at {url}/console/api/")
    lines += [f"key: {key}", f"ca: {ca}"]
    llms = [m.name for m in stack.models if m.format in ("gguf", "safetensors")]
    if llms:
        body = f'{{"model": "{llms[0]}", "messages": [{{"role": "user", "content": "Hello"}}], "max_tokens": 16}}'
        lines.append(
            f"try: curl --cacert {ca} -H 'Authorization: Bearer {key}' -H 'Content-Type: application/json' "
            f"-d '{body}' {url}/v1/chat/completions")
    return lines
