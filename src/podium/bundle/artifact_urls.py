"""Where an artifact of stacks/versions.yaml lies on the stack's artifact mirror: in the bundle's
slots when the stack serves a bundle, at the paths a site's own mirror has always kept otherwise.
The bundle's manifest and every role that fetches an artifact take their paths from here."""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Any, Literal

from podium.bundle.manifest import MANIFEST, SLOTS, read_manifest
from podium.stack.model import Stack
from podium.stack.versions import VersionTable

MirrorForm = Literal["bundle", "url"]

# Where a site's own mirror (`artifact_mirror: URL`) keeps a component's artifacts: k3s one
# folder per release, NVIDIA's hosts' paths under nvidia/ (the nvidia-repository artifact is a tar
# of that folder), anything else at its file's own path.
SITE_PATHS = {"gpu": "nvidia", "kubernetes": "k3s/{version}/{file}"}
# Left in an unpacked folder with the sha256 of the tar it came from.
UNPACKED_MARK = ".podium-unpacked"
# Artifacts that are a tar of a folder roles read files inside (NVIDIA's apt repositories): the
# mirror serves the tar unpacked, in the folder named like the slot without ".tar".
FOLDERS = {("gpu", "nvidia-repository")}


def mirror_form(stack: Stack) -> MirrorForm | None:
    """How the stack names its mirror: a bundle it serves itself, a site's URL, or none."""
    if stack.mirror_bundle is not None:
        return "bundle"
    return "url" if stack.mirror_url else None


def slot_path(component: str, file: str) -> str:
    """The operator's file in the bundle, relative to it: slots/<component>/<file>."""
    return f"{SLOTS}/{component}/{file}"


def served_path(component: str, key: str, file: str) -> str:
    """What roles read of a slot on the mirror: the file, or the folder a tar is unpacked into."""
    path = slot_path(component, file)
    return path.removesuffix(".tar") if (component, key) in FOLDERS else path


def artifact_url(mirror: str | None, form: MirrorForm | None, table: VersionTable, component: str,
                 key: str) -> str | None:
    """The URL a node fetches `component`'s artifact `key` from; None without a mirror.

    mirror: the mirror's URL (the bundle's node for the bundle form).
    form: "bundle" (the bundle's slots) or "url" (a site's mirror, at SITE_PATHS).
    table: the host's effective version table (its component versions pinned).
    component, key: the artifact, as components.<component>.artifacts.<key> names it.

    Example:
        >>> artifact_url("https://10.0.0.2:8440", "bundle", load_versions(), "kubernetes", "k3s")
        'https://10.0.0.2:8440/slots/kubernetes/k3s'
    """
    if not mirror:
        return None
    entry = table.components[component]
    file = entry.artifacts[key].file
    if form == "bundle":
        path = served_path(component, key, file)
    else:
        path = SITE_PATHS.get(component, "{file}").format(version=entry.version, file=file)
    return f"{mirror.rstrip('/')}/{path}"


def stack_artifact_url(stack: Stack, table: VersionTable, component: str, key: str) -> str | None:
    """artifact_url for the stack's own mirror, at the stack's versions."""
    return artifact_url(stack.mirror_url, mirror_form(stack), table.for_stack(stack), component, key)


def filled_slots(bundle: Path, table: VersionTable) -> list[dict[str, Any]]:
    """The slots of the bundle the operator has filled, each with the sha256 the table records
    (`podium bundle verify` holds the file to it) and, for a tar of a folder, the folder the
    mirror serves it as; none for a folder with no manifest yet.

    bundle: the bundle folder on the control machine.
    table: the version table.
    """
    if not (bundle / MANIFEST).is_file():
        return []
    out = []
    for slot in read_manifest(bundle)["slots"]:
        component, key = slot["component"], slot["artifact"]
        if not (bundle / slot["path"]).is_file() or component not in table.components:
            continue
        artifact = table.components[component].artifacts.get(key)
        if artifact is None:
            continue
        served = served_path(component, key, artifact.file)
        out.append({"path": slot["path"], "sha256": artifact.sha256,
                    "folder": served if served != slot["path"] else None})
    return out


def unpack_command(tar: str, folder: str, sha256: str) -> str:
    """Shell that serves a tar slot as its folder: unpacked beside, readable by the web server,
    marked with the tar's sha256, and swapped in whole so a cut-off run leaves the old folder."""
    q = shlex.quote
    tmp = q(f"{folder}.unpacking")
    return " && ".join([
        f"rm -rf {tmp}", f"mkdir -p {tmp}",
        # GNU tar drops leading slashes and refuses members with '..': nothing lands outside.
        f"tar -xf {q(tar)} -C {tmp} --no-same-owner --no-same-permissions",
        f"chmod -R u+rwX,go+rX,go-w {tmp}",
        f"echo {q(sha256)} > {tmp}/{UNPACKED_MARK}",
        f"rm -rf {q(folder)}", f"mv {tmp} {q(folder)}",
    ])
