"""Where a GPU node gets NVIDIA's packages: pure functions of the gpu settings, the node's
distribution and architecture, and the pins of stacks/versions.yaml."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pyinfra.api.exceptions import DeployError

from podium.bundle.artifact_urls import artifact_url
from podium.pinned import node_versions

# (ID, VERSION_ID) of /etc/os-release → the folder of NVIDIA's CUDA repository.
SUPPORTED = {
    ("debian", "12"): "debian12",
    ("ubuntu", "22.04"): "ubuntu2204",
    ("ubuntu", "24.04"): "ubuntu2404",
}
CUDA_ARCH = {"amd64": "x86_64", "arm64": "sbsa"}


@dataclass(frozen=True)
class Node:
    """What the role learned about the node: distribution, its version, dpkg architecture, kernel."""

    distro: str
    version: str
    arch: str
    kernel: str

    @property
    def cuda_distro(self) -> str:
        try:
            return SUPPORTED[(self.distro, self.version)]
        except KeyError:
            known = ", ".join(f"{d} {v}" for d, v in SUPPORTED)
            raise DeployError(
                f"{self.distro} {self.version} is not a distribution the gpu role supports ({known})"
            ) from None


def mirrored(url: str, settings: Mapping[str, Any]) -> str:
    """NVIDIA's URL, or the same path inside the mirror's copy of NVIDIA's repositories when the
    stack says mirror: <mirror>/nvidia on a site's mirror, the unpacked nvidia-repository slot of
    a bundle."""
    if settings["source"] != "mirror":
        return url
    # Outside a pyinfra run (a plan, a test) the table's own pins; the artifact's path is the same.
    base = artifact_url(settings.get("mirror"), settings.get("mirror_form"), node_versions(), "gpu",
                        "nvidia-repository")
    if base is None:
        raise DeployError("gpu.source is mirror but the stack sets no artifact_mirror; set one")
    path = url.split("://", 1)[1].split("/", 1)[1]
    return f"{base}/{path}"


def cuda_repository(settings: Mapping[str, Any], node: Node, defaults: Mapping[str, Any]) -> str:
    arch = CUDA_ARCH.get(node.arch)
    if arch is None:
        raise DeployError(f"architecture {node.arch} has no NVIDIA CUDA repository")
    return mirrored(f"{defaults['gpu_cuda_repository']}/{node.cuda_distro}/{arch}", settings)


def sources(settings: Mapping[str, Any], node: Node, defaults: Mapping[str, Any]) -> dict[str, str]:
    """apt source files (deb822) → content; each names the key that signs it."""
    keyrings = defaults["gpu_keyrings"]
    out: dict[str, str] = {}
    if settings["source"] == "distribution" and node.distro == "debian":
        debian = f"{settings['mirror'].rstrip('/')}/debian" if settings.get("mirror") else defaults[
            "gpu_debian_repository"]
        out["podium-debian-nonfree.sources"] = (
            "# Written by Podium (role gpu): Debian's NVIDIA driver lives in contrib and non-free.\n"
            f"Types: deb\nURIs: {debian}\nSuites: bookworm bookworm-updates\n"
            "Components: contrib non-free non-free-firmware\n"
            "Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg\n"
        )
    if settings["source"] in ("nvidia", "mirror"):
        out["podium-cuda.sources"] = (
            "# Written by Podium (role gpu): NVIDIA's driver repository.\n"
            f"Types: deb\nURIs: {cuda_repository(settings, node, defaults)}/\nSuites: /\n"
            f"Signed-By: {keyrings}/podium-cuda.asc\n"
        )
    if settings["container_toolkit"]:
        toolkit = mirrored(defaults["gpu_toolkit_repository"], settings)
        out["podium-nvidia-container-toolkit.sources"] = (
            "# Written by Podium (role gpu): NVIDIA's container toolkit repository.\n"
            f"Types: deb\nURIs: {toolkit}/{node.arch}/\nSuites: /\n"
            f"Signed-By: {keyrings}/podium-nvidia-container-toolkit.asc\n"
        )
    return out


def keys(settings: Mapping[str, Any], node: Node, defaults: Mapping[str, Any]) -> dict[str, str]:
    """Keyring file → the URL it is fetched from (NVIDIA's, or the mirror's copy)."""
    out = {}
    if settings["source"] in ("nvidia", "mirror"):
        out["podium-cuda.asc"] = f"{cuda_repository(settings, node, defaults)}/{defaults['gpu_cuda_key']}"
    if settings["container_toolkit"]:
        out["podium-nvidia-container-toolkit.asc"] = mirrored(defaults["gpu_toolkit_key"], settings)
    return out


def packages(settings: Mapping[str, Any], node: Node, pins: Mapping[str, str]) -> list[str]:
    """The packages that give the stack's driver branch, its tools and services on this node."""
    branch = settings["driver_branch"]
    node.cuda_distro  # noqa: B018  # refuses a distribution the role does not know
    out = [f"linux-headers-{node.kernel}"]
    if settings["source"] == "distribution" and node.distro == "debian":
        packaged = pins["nvidia-driver"].split(".", 1)[0]
        if branch != packaged:
            raise DeployError(
                f"Debian {node.version} packages NVIDIA driver branch {packaged}, the stack asks for "
                f"{branch}; set gpu.driver_branch: \"{packaged}\" or gpu.source: nvidia"
            )
        if settings["nvswitch"]:
            raise DeployError(
                "Debian does not package NVIDIA's fabric manager, which NVSwitch systems need; "
                "set gpu.source: nvidia (or mirror)"
            )
        out += [f"nvidia-driver={pins['nvidia-driver']}", "nvidia-smi", "nvidia-persistenced",
                "firmware-misc-nonfree"]
    elif settings["source"] == "distribution":
        out += [f"nvidia-headless-{branch}-server", f"nvidia-utils-{branch}-server"]
        if settings["nvswitch"]:
            out.append(f"nvidia-fabricmanager-{branch}")
    else:
        out.append(f"cuda-drivers-{branch}")
        if settings["nvswitch"]:
            out.append(f"nvidia-fabricmanager-{branch}")
    if settings["container_toolkit"]:
        version = pins["nvidia-container-toolkit"]
        out += [f"nvidia-container-toolkit={version}", f"nvidia-container-toolkit-base={version}"]
    return out
