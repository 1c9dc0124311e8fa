"""Values the cluster objects need that a stack file never holds: credentials, certificates and
the CA, handed in by `podium up` from the stack's secrets folder."""

from __future__ import annotations

import base64
from dataclasses import dataclass, field
from typing import Any

from podium.cluster.meta import Manifest, metadata
from podium.stack.model import Stack

REGISTRY_AUTH = "podium-registry-auth"
CA_CONFIGMAP = "podium-ca"
GATEWAY_TLS = "podium-gateway-tls"
GATEWAY_STORE = "podium-gateway-store"


@dataclass(frozen=True)
class ClusterInputs:
    """Secrets stay out of repr so they never reach a log line or a traceback."""

    registry_user: str | None = None
    registry_password: str | None = field(default=None, repr=False)
    # PEM of Podium's CA: nodes and pods trust the registry's and gateway's certificates by it.
    ca_pem: str | None = None
    gateway_tls_cert: str | None = None
    gateway_tls_key: str | None = field(default=None, repr=False)
    gateway_store_password: str | None = field(default=None, repr=False)
    # Only the hash: the gateway checks admin tokens against it.
    gateway_admin_token_sha256: str | None = None


def secret(stack: Stack, component: str, workload: str, name: str, data: dict[str, str],
           kind: str = "Opaque") -> Manifest:
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": metadata(stack, component, workload, name),
        "type": kind,
        # `data`, not `stringData`: server-side apply then owns exactly the keys it sent.
        "data": {k: base64.b64encode(v.encode()).decode() for k, v in sorted(data.items())},
    }


def registry_objects(stack: Stack, inputs: ClusterInputs) -> list[Manifest]:
    """The registry credentials and CA model pulls use; only what was handed in is created."""
    out: list[Manifest] = []
    if inputs.registry_user and inputs.registry_password:
        out.append(
            secret(stack, "registry", "registry", REGISTRY_AUTH, {
                "PODIUM_REGISTRY_USER": inputs.registry_user,
                "PODIUM_REGISTRY_PASSWORD": inputs.registry_password,
            })
        )
    if inputs.ca_pem:
        data: dict[str, Any] = {"ca.pem": inputs.ca_pem}
        out.append({
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": metadata(stack, "registry", "registry", CA_CONFIGMAP),
            "data": data,
        })
    return out
