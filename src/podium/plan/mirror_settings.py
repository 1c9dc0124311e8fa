"""The bundle's node (the mirror component) and what every node's apt and pip take from it."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from podium.bundle.artifact_urls import filled_slots
from podium.bundle.debs import KEY_FILE
from podium.bundle.manifest import MANIFEST, file_sha256
from podium.plan.audiences import audiences
from podium.stack.model import Stack

Settings = dict[str, Any]


# Where the bundle's node keeps the bundle, and where every node keeps the CA apt trusts for it.
MIRROR_ROOT = "/srv/podium-mirror"
MIRROR_ETC = "/etc/podium/mirror"
MIRROR_CA = "/etc/podium/mirror-ca.pem"


def mirror_hosts(stack: Stack) -> list[str]:
    return [stack.mirror_node] if stack.mirror_node else []


def mirror_settings(stack: Stack, host: str) -> Settings:
    """The bundle's node: what it serves, where, to whom, and which bundle (its manifest's
    digest, so a changed bundle is shipped again and an unchanged one is kept, wherever it sits
    on the control machine: roles find it as host data `podium_bundle`)."""
    from podium.stack.versions import load_versions

    bundle, folder = stack.mirror_bundle, stack.bundle_folder
    assert bundle is not None and folder is not None
    manifest = folder / MANIFEST
    return {
        # The operator's files are not in the manifest: a filled or refilled slot ships too.
        # (Artifacts are the same at every version, so the table as it is names them.)
        "slots": filled_slots(folder, load_versions()),
        "port": bundle.port,
        "address": str(stack.node(host).address),
        "server_names": [host],
        "bundle_digest": file_sha256(manifest),
        "sources": audiences(stack)["stack"],
        "root": MIRROR_ROOT,
        "etc": MIRROR_ETC,
        "ca": MIRROR_CA,
    }


def mirror_source(stack: Stack) -> Settings | None:
    """What every node's apt and pip take from the bundle's node; None without a bundle. The
    manifest's digest is in it, so a new bundle reconfigures what installs from it."""
    url, folder = stack.mirror_url, stack.bundle_folder
    if not stack.mirror_bundle or url is None or folder is None:
        return None
    return {
        "url": url,
        "host": urlsplit(url).hostname,
        "bundle_digest": file_sha256(folder / MANIFEST),
        "keyring": f"/etc/apt/keyrings/{KEY_FILE}",
        "ca": MIRROR_CA,
    }
