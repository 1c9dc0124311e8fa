"""The cluster objects' inputs from the stack's secrets on the control machine: what `podium up`
hands the cluster layer so the Secrets its pods name exist (registry pull account, stack CA,
gateway certificate and store password, the admin token's hash)."""

from __future__ import annotations

import hashlib

from podium.cluster.inputs import ClusterInputs
from podium.gateway_access import ADMIN_TOKEN
from podium.plan.components import STORE_PASSWORD
from podium.registry.access import pull_credential
from podium.registry.ca import ca_certificate, server_certificate
from podium.secrets import StackSecrets
from podium.stack.model import Stack


def stack_inputs(stack: Stack) -> ClusterInputs:
    """Only what the stack's cluster part uses: nothing for a stack without a Kubernetes section."""
    kube, gw, registry = stack.kubernetes, stack.gateway, stack.registry
    if kube is None:
        return ClusterInputs()
    secrets = StackSecrets(stack.name)
    pulls = registry is not None and bool(kube.engines or kube.trainer)
    gateway = gw if kube.gateway else None
    values: dict[str, str | None] = {}
    if pulls:
        credential = pull_credential(stack.name)
        values.update(registry_user=credential.user, registry_password=credential.password)
    if (pulls and registry is not None and registry.tls) or (gateway is not None and
                                                              (gateway.tls or gateway.store == "postgresql")):
        values["ca_pem"] = ca_certificate(stack.name).read_text()
    if gateway is not None:
        token = secrets.token(ADMIN_TOKEN)
        values["gateway_admin_token_sha256"] = hashlib.sha256(token.encode()).hexdigest()
        if gateway.tls:
            # The pods listen on their nodes' ports (hostPort), so clients reach a node's address
            # or the gateways' one address: the certificate names those and the node names.
            addresses = [str(stack.node(n).address) for n in gateway.nodes]
            addresses += [str(gateway.address)] if gateway.address else []
            cert, key = server_certificate(stack.name, "gateway-cluster", addresses, gateway.nodes)
            values.update(gateway_tls_cert=cert.read_text(), gateway_tls_key=key.read_text())
        if gateway.store == "postgresql":
            values["gateway_store_password"] = secrets.token(STORE_PASSWORD)
    return ClusterInputs(**values)
