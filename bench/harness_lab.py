"""The harness's targets on a running lab appliance (`podium lab up STACK`): its gateway, and the
first llama.cpp replica it routes to, both measured from the first gateway node.

An engine's port lets in the gateway nodes alone, so AIPerf runs in that node's network
namespace (the lab made it; `ip netns exec`): the direct path is the node to the replica, the
other the node to the gateway and on to the replica, the way clients on the appliance's network
reach them. AIPerf trusts the stack CA through SSL_CERT_FILE. The benchmark's key is revoked at
the end.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from contextlib import contextmanager

from gateway import Target

from podium.gateway_access import admin_api, gateway_url
from podium.lab.network import NETNS_DIR, netns_name
from podium.registry.ca import ca_certificate
from podium.services.gateway.keys import KeySpec
from podium.stack import load_stack
from podium.stack.ports import replicas


@contextmanager
def lab_targets(folder: str) -> Iterator[tuple[list[Target], list[str], str]]:
    """The direct and gateway targets of the lab stack in `folder`, the command prefix that runs
    AIPerf where both are reached, and a line saying where."""
    stack = load_stack(folder)
    gw = stack.gateway
    engine = next((e for e in stack.engines if e.kind == "llamacpp"), None)
    if gw is None or engine is None:
        raise SystemExit(f"stack {stack.name} needs a gateway and a llama.cpp engine for --lab")
    replica = replicas(engine)[0]
    hop = gw.nodes[0]
    netns = netns_name(stack.name, hop)
    if not (NETNS_DIR / netns).exists():
        raise SystemExit(f"--lab measures from {hop}'s network namespace {netns}, which this machine"
                         f" lacks; bring the stack up with `podium lab up {folder}` (nspawn machines)")
    url = gateway_url(stack)
    model = stack.model(engine.model).name
    api = admin_api(stack.name, url)
    name = f"bench-{time.strftime('%Y%m%d-%H%M%S')}"
    key = api.create_key(KeySpec(name=name, models=(model,)))["key"]
    previous = os.environ.get("SSL_CERT_FILE")
    if gw.tls:
        os.environ["SSL_CERT_FILE"] = str(ca_certificate(stack.name))
    try:
        where = (f"; lab {stack.name}: AIPerf in {hop}'s network namespace, gateway {url} on"
                 f" {', '.join(gw.nodes)}, engine {engine.name} on {replica.node}")
        direct = f"http://{stack.node(replica.node).address}:{replica.port}/v1"
        yield [Target("direct", direct, model), Target("podium", url + "/v1", model, key)], \
            ["ip", "netns", "exec", netns], where
    finally:
        if previous is None:
            os.environ.pop("SSL_CERT_FILE", None)
        else:
            os.environ["SSL_CERT_FILE"] = previous
        api.revoke_key(name)
