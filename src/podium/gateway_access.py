"""Reaching a deployed gateway from the control machine: its URL, the stack CA, the admin token,
and the stack's declared API keys (created once, kept 0600 here, shown only on request)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from podium.errors import PodiumError
from podium.secrets import StackSecrets
from podium.services.gateway.client import AdminApi
from podium.stack.model import Stack

ADMIN_TOKEN = "gateway-admin"


def gateway_url(stack: Stack, node: str | None = None) -> str:
    gw = stack.gateway
    if gw is None:
        raise PodiumError(f"stack {stack.name} declares no gateway")
    address = stack.node(node or gw.nodes[0]).address
    return f"{'https' if gw.tls else 'http'}://{address}:{gw.port}"


def stack_admin(stack: str | Stack) -> AdminApi:
    """The admin API of a stack's (first) gateway, with its admin token and CA."""
    from podium.registry.ca import ca_certificate
    from podium.stack import load_stack

    loaded = load_stack(stack) if isinstance(stack, str) else stack
    url = gateway_url(loaded)
    ca = ca_certificate(loaded.name) if url.startswith("https") else None
    return AdminApi(url, StackSecrets(loaded.name).token(ADMIN_TOKEN), ca_file=ca)


def admin_request(stack: str, url: str, method: str, path: str, body: Any = None) -> Any:
    """One admin API call over TLS verified against the stack CA."""
    from podium.registry.ca import ca_certificate

    ca = ca_certificate(stack) if url.startswith("https") else None
    return AdminApi(url, StackSecrets(stack).token(ADMIN_TOKEN), ca_file=ca)._call(method, path, body)


def ensure_declared_keys(stack: str, url: str, keys: list[dict[str, Any]]) -> list[str]:
    """Create the stack's declared keys the gateway does not have; their secrets are kept 0600."""
    existing = {k["name"] for k in admin_request(stack, url, "GET", "/admin/v1/keys")["data"]}
    created = []
    for key in keys:
        if key["name"] in existing:
            continue
        spec = {k: v for k, v in key.items() if v is not None and k != "expires"}
        if key.get("expires"):
            from podium.services.gateway.keys import parse_expiry

            spec["expires_at"] = parse_expiry(str(key["expires"]))
        answer = admin_request(stack, url, "POST", "/admin/v1/keys", spec)
        _keep(stack, key["name"], answer["key"])
        created.append(key["name"])
    return created


def key_file(stack: str, name: str) -> Path:
    return StackSecrets(stack).path("keys") / name


def _keep(stack: str, name: str, secret: str) -> None:
    path = key_file(stack, name)
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    StackSecrets._write(path, secret + "\n")
