"""Check objects against the Kubernetes OpenAPI schema of the cluster's version (strict: unknown
fields fail), plus the name and label rules the API server enforces beyond the schema."""

from __future__ import annotations

import re
from collections.abc import Iterable

import kubernetes_validate

from podium.cluster.meta import Manifest
from podium.errors import PodiumError
from podium.stack.versions import VersionTable

_VERSION = re.compile(r"^v?(\d+)\.(\d+)")
# RFC 1123 subdomain (object names) and label values, as the API server checks them.
_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
# Services and namespaces are DNS labels: they become host names.
_DNS_LABEL_KINDS = {"Service", "Namespace"}


def target_version(versions: VersionTable) -> str:
    """`v1.31.4+k3s1` → `1.31`: schemas differ per minor release only."""
    pinned = versions.version("kubernetes")
    match = _VERSION.match(pinned)
    if not match:
        raise PodiumError(
            f"kubernetes version {pinned!r} in the version table is not vMAJOR.MINOR.x"
        )
    return f"{match.group(1)}.{match.group(2)}"


def problems(obj: Manifest, version: str) -> list[str]:
    """Every reason the API server of `version` would refuse `obj`; empty when it is valid."""
    kind = obj.get("kind", "?")
    name = obj.get("metadata", {}).get("name", "?")
    where = f"{kind}/{name}"
    out: list[str] = []
    try:
        kubernetes_validate.validate(obj, version, strict=True)
    except kubernetes_validate.ValidationError as exc:
        path = ".".join(str(p) for p in exc.path) or "(top)"
        out.append(f"{where}: {path}: {exc.message}")
    except kubernetes_validate.SchemaNotFoundError as exc:
        out.append(f"{where}: no schema in Kubernetes {version} ({exc})")
    limit = 63 if kind in _DNS_LABEL_KINDS else 253
    if not (_SUBDOMAIN.match(name) and len(name) <= limit) or (
        kind in _DNS_LABEL_KINDS and "." in name
    ):
        out.append(f"{where}: name {name!r} is not a valid DNS name of at most {limit} characters")
    for key, value in obj.get("metadata", {}).get("labels", {}).items():
        if len(value) > 63 or not _LABEL_VALUE.match(value):
            out.append(f"{where}: label {key}={value!r} is not a valid label value")
    return out


def validate_objects(objects: Iterable[Manifest], versions: VersionTable) -> None:
    """Raise one error listing every invalid object, so a render never writes a refused manifest."""
    version = target_version(versions)
    found = [p for obj in objects for p in problems(obj, version)]
    if found:
        raise PodiumError(
            f"{len(found)} Kubernetes object problem(s) for Kubernetes {version}: "
            + "; ".join(found)
        )
