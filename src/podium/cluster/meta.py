"""Names, labels, images and annotations every Kubernetes object Podium builds shares."""

from __future__ import annotations

import hashlib
import json
from typing import Any
from urllib.parse import urlsplit

from podium.stack.model import Stack
from podium.stack.versions import VersionTable, public_version

MANAGED_BY = "app.kubernetes.io/managed-by"
STACK = "podium.io/stack"
COMPONENT = "podium.io/component"
WORKLOAD = "podium.io/workload"
CONFIG_HASH = "podium.io/config-hash"
FIELD_MANAGER = "podium"

# Images Podium's release builds, per component, unless versions.yaml names one (`image:`).
# The tag is always the component's pinned version, so an upgrade is a version bump.
DEFAULT_IMAGES = {
    "engine-llamacpp": "podium/llama-server",
    "engine-vllm": "podium/vllm",
    "engine-sglang": "podium/sglang",
    "engine-predictive": "podium/mlserver",
    "gateway": "podium/podium",
    "trainer": "podium/trainer",
}

Manifest = dict[str, Any]


def labels(stack: Stack, component: str, workload: str) -> dict[str, str]:
    """The labels prune selects on: an object without them is never Podium's to delete."""
    return {
        MANAGED_BY: "podium",
        STACK: stack.name,
        COMPONENT: component,
        WORKLOAD: workload,
        "app.kubernetes.io/name": workload,
        "app.kubernetes.io/part-of": "podium",
    }


def selector(stack: Stack, workload: str) -> dict[str, str]:
    """Pod selector labels: a subset of `labels` that never changes (selectors are immutable)."""
    return {STACK: stack.name, WORKLOAD: workload}


def managed_selector(stack_name: str) -> str:
    """The label selector matching every object Podium manages for one stack."""
    return f"{MANAGED_BY}=podium,{STACK}={stack_name}"


def metadata(
    stack: Stack, component: str, workload: str, name: str, *, namespaced: bool = True
) -> dict[str, Any]:
    out: dict[str, Any] = {"name": name, "labels": labels(stack, component, workload)}
    if namespaced:
        out["namespace"] = namespace(stack)
    return out


def namespace(stack: Stack) -> str:
    assert stack.kubernetes is not None
    return stack.kubernetes.namespace


def image(stack: Stack, versions: VersionTable, component: str) -> str:
    """`<mirror host>/<repository>:<version>`; no mirror host when the stack names no mirror."""
    extra = versions.extra(component)
    repository = str(extra.get("image") or DEFAULT_IMAGES[component])
    # A tag cannot hold "+", so an image carries the public version, without the build label.
    reference = f"{repository}:{public_version(versions.version(component, stack))}"
    return f"{mirror_host(stack)}/{reference}" if stack.mirror_url else reference


def podium_image(stack: Stack, versions: VersionTable) -> str:
    """The image holding the podium CLI (model pulls) and the gateway: both ship in one wheel."""
    return image(stack, versions, "gateway")


def mirror_host(stack: Stack) -> str:
    """The host[:port] of the artifact mirror, which also serves the images nodes pull."""
    mirror = stack.mirror_url or ""
    return urlsplit(mirror).netloc or mirror.rstrip("/")


def content_hash(*parts: Any) -> str:
    """A digest of the config a pod reads, set as an annotation so a config change rolls pods."""
    canonical = json.dumps(parts, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]
