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


def admin_api(stack: str, url: str) -> AdminApi:
    """The admin API at `url` with the stack's admin token; TLS is checked against the stack CA."""
    from podium.registry.ca import ca_certificate

    ca = ca_certificate(stack) if url.startswith("https") else None
    return AdminApi(url, StackSecrets(stack).token(ADMIN_TOKEN), ca_file=ca)


def stack_admin(stack: str | Stack) -> AdminApi:
    """The admin API of a stack's (first) gateway."""
    from podium.stack import load_stack

    loaded = load_stack(stack) if isinstance(stack, str) else stack
    return admin_api(loaded.name, gateway_url(loaded))


def ensure_declared_keys(stack: str, url: str, keys: list[dict[str, Any]]) -> list[str]:
    """Create the stack's declared keys the gateway does not have; their secrets are kept 0600."""
    from podium.services.gateway.keys import KeySpec, parse_expiry

    api = admin_api(stack, url)
    missing = missing_declared_keys(stack, url, keys, api)
    created = []
    for key in keys:
        if key["name"] not in missing:
            continue
        models = key.get("models") or "*"
        spec = KeySpec(
            name=key["name"],
            models=("*",) if models == "*" else tuple(models),
            rpm=key.get("rpm"),
            tpm=key.get("tpm"),
            quota=key.get("quota"),
            max_in_flight=key.get("max_in_flight"),
            expires_at=parse_expiry(str(key["expires"])) if key.get("expires") else None,
        )
        _keep(stack, key["name"], api.create_key(spec)["key"])
        created.append(key["name"])
    return created


def missing_declared_keys(
    stack: str, url: str, keys: list[dict[str, Any]], api: AdminApi | None = None
) -> list[str]:
    """Names of the declared keys the gateway at `url` does not have."""
    existing = {k["name"] for k in (api or admin_api(stack, url)).list_keys()}
    return [k["name"] for k in keys if k["name"] not in existing]


def key_file(stack: str, name: str) -> Path:
    return StackSecrets(stack).path("keys") / name


def _keep(stack: str, name: str, secret: str) -> None:
    path = key_file(stack, name)
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    StackSecrets.write_private(path, secret + "\n")
