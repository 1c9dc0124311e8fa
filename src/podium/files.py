"""The files a component's role writes on a host, built from its settings alone, so that
`podium render`, the roles and the tests all see the same bytes."""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import Any

from podium.render import render_component

# Components whose files are not plain templates of templates/<role>/ name a builder
# `module:function` taking (host, settings) and returning relative path → content.
BUILDERS: dict[str, str] = {
    # keepalived's files only where the stack declares gateway.address.
    "gateway": "podium.files:build_gateway",
    # One unit per engine replica (and MLServer's settings per replica).
    "engine-llamacpp": "podium.engine_files:build_llamacpp",
    "engine-predictive": "podium.engine_files:build_predictive",
    "engine-sglang": "podium.engine_files:build_sglang",
    "engine-vllm": "podium.engine_files:build_vllm",
    "monitoring": "podium.monitoring.role_files:build",
    "network": "podium.network_files:build",
}


def files_for(component: str, host: str, settings: Mapping[str, Any]) -> dict[str, str]:
    """Relative path → content of every file the component's role writes on `host`."""
    target = BUILDERS.get(component)
    if target is not None:
        module, _, func = target.partition(":")
        built: dict[str, str] = getattr(importlib.import_module(module), func)(host, settings)
        return built
    return render_component(component.replace("-", "_"), host, settings)


def build_gateway(host: str, settings: Mapping[str, Any]) -> dict[str, str]:
    """The gateway's files, and keepalived's beside them where the gateways share an address."""
    from podium.network_files import LAB_INTERFACE

    floating = settings.get("floating")
    if floating is None:
        return render_component("gateway", host, settings, skip="keepalived/")
    # `podium render` shows the interface the role finds holding the node's address on the node.
    shown = {**settings, "floating": {**floating, "interface": floating["interface"] or LAB_INTERFACE}}
    return render_component("gateway", host, shown)
