"""The version table (`stacks/versions.yaml`): one pinned version per component, with the
packages and artifacts (and their sha256) that version means."""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml
from packaging.version import InvalidVersion, Version
from pydantic import BaseModel, ConfigDict, ValidationError, model_validator

from podium.errors import InvalidInput
from podium.stack.model import Stack

DEFAULT_TABLE = Path(__file__).resolve().parents[3] / "stacks" / "versions.yaml"
# What a version must look like where no pin of the table can say: the gpu component's version is
# the NVIDIA driver branch its apt preference and package names carry.
VERSION_SHAPES = {"gpu": (re.compile(r"[0-9]{3}"), "an NVIDIA driver branch, three digits like 550")}
# Debian policy: an optional epoch, then an upstream version that starts with a digit.
_DEBIAN_VERSION = re.compile(r"([0-9]+:)?[0-9][A-Za-z0-9.+~-]*")
# Components that run Podium's own wheel: their version carries the wheel's build
# (0.1.0+<12 hex digits>), so a change of Podium's code is an upgrade of them and a release
# names the code it ran. The table pins the public part; `for_stack` adds the build.
RUNS_PODIUM_WHEEL = ("gateway",)
# The table a rollback runs from (a release's snapshot) instead of DEFAULT_TABLE.
_in_use: list[Path] = []


class Artifact(BaseModel):
    """A file a role downloads onto a node. One that cannot be fetched where the table is kept
    is `operator_supplied` and has no sha256 until the operator records the digest of the file
    they put in the artifact mirror: a guessed checksum would only teach people to ignore it."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    file: str
    sha256: str | None = None
    operator_supplied: bool = False

    @model_validator(mode="after")
    def _recorded_or_operator_supplied(self) -> Artifact:
        if self.sha256 is None and not self.operator_supplied:
            raise ValueError(f"artifact {self.file} has no sha256; record it, or mark it operator_supplied")
        return self


class SigningKey(BaseModel):
    """An apt repository's signing key: the node checks the fingerprint of the key it downloads
    before apt is allowed to trust it."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    fingerprint: str

    @model_validator(mode="after")
    def _full_fingerprint(self) -> SigningKey:
        # A short key id can be forged by anyone; only the full v4 fingerprint pins a key.
        if len(self.fingerprint) != 40 or any(c not in "0123456789ABCDEF" for c in self.fingerprint):
            raise ValueError(f"key fingerprint {self.fingerprint!r} is not 40 upper-case hex digits")
        return self


class ComponentVersion(BaseModel):
    model_config = ConfigDict(extra="allow", frozen=True)
    version: str
    packages: dict[str, str] = {}
    artifacts: dict[str, Artifact] = {}
    keys: dict[str, SigningKey] = {}
    requirements: list[str] = []
    # Where `packages` come from: Debian's archive, or a vendor's repository (nvidia) that the
    # bundle cannot fetch and leaves to the operator.
    repository: str = "debian"
    # Podium's own release (its roles, its wheel): laid down from this checkout, so a stack
    # cannot choose another version of it.
    own: bool = False

    def at(self, component: str, version: str) -> ComponentVersion:
        """This entry pinned at `version`: every pin that is the entry's own version (a package
        at it, a `name==<version>` requirement) follows; the other pins stay. A version the
        table cannot pin is refused with one sentence naming `versions.<component>`.

        Example:
            >>> load_versions().components["engine-sglang"].at("engine-sglang", "0.5.24").requirements
            ['sglang==0.5.24']
        """
        if version == self.version:
            return self
        if self.own and public_version(version) == self.version:
            # A build of this very version (the plan's, or a release's being rolled back to).
            return self.model_copy(update={"version": version})
        why = self.why_unpinnable(component, version)
        if why:
            raise InvalidInput(f"versions.{component} = {version!r}: cannot be pinned: {why}")
        lists = {key: [_repin(r, self.version, version) for r in value]
                 for key, value in self._requirement_lists().items()}
        packages = {n: version if v == self.version else v for n, v in self.packages.items()}
        return self.model_copy(update={"version": version, "packages": packages, **lists})

    def moves(self, key: str) -> bool:
        """Whether an override moves a pin of the requirement list `key` (e.g. cpu_requirements)."""
        return any(_pinned_name(r, self.version) for r in self._requirement_lists().get(key, []))

    def _requirement_lists(self) -> dict[str, list[str]]:
        # `requirements`, and any other list of pip requirements (vLLM's cpu_requirements).
        out = {"requirements": list(self.requirements)}
        for key, value in (self.model_extra or {}).items():
            if key.endswith("requirements") and isinstance(value, list):
                out[key] = [str(v) for v in value]
        return out

    def why_unpinnable(self, component: str, version: str) -> str | None:
        """Why the table cannot pin `component` at `version`, and the fix; None when it can."""
        table = f"components.{component} in stacks/versions.yaml"
        if self.own:
            return (f"{component} {self.version} is Podium's own, laid down from this checkout; "
                    "remove the override")
        shape = VERSION_SHAPES.get(component)
        if shape and not shape[0].fullmatch(version):
            return f"{component}'s version is {shape[1]}; give one"
        for key, artifact in sorted(self.artifacts.items()):
            if artifact.sha256 and self.version in artifact.file:
                return (f"{table} records the sha256 of {artifact.file} ({self.version}) only; "
                        f"record the {version} file and its sha256 under artifacts.{key} there instead")
        follows_apt = any(v == self.version for v in self.packages.values())
        if follows_apt and not _DEBIAN_VERSION.fullmatch(version):
            return f"it is not a Debian package version apt can pin (like {self.version}); give one"
        if any(self.moves(key) for key in self._requirement_lists()):
            try:
                Version(version)
            except InvalidVersion:
                return f"it is not a Python package version pip can pin (like {self.version}); give one"
        return None


class VersionTable(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    format: int
    release: str
    components: dict[str, ComponentVersion]

    def version(self, component: str, stack: Stack | None = None) -> str:
        """The version a stack asks for: its override, else the table's pin."""
        chosen = chosen_versions(stack) if stack is not None else {}
        return chosen.get(component, built(component, self.components[component].version))

    def with_versions(self, chosen: Mapping[str, str]) -> VersionTable:
        """The table with each named component pinned at the version given (see
        `ComponentVersion.at`); a component the table does not know is refused."""
        components = dict(self.components)
        for name, version in chosen.items():
            if name not in components:
                raise InvalidInput(
                    f"versions.{name} = {version!r}: {name} is not a component of stacks/versions.yaml; "
                    f"name one of {', '.join(sorted(components))}"
                )
            components[name] = components[name].at(name, version)
        return self.model_copy(update={"components": components})

    def for_stack(self, stack: Stack) -> VersionTable:
        """The effective table of a stack: this table with the stack's overrides pinned.

        Example:
            >>> load_versions().for_stack(load_stack("stacks/lab")).pinned("registry", ["nginx"])  # doctest: +SKIP
        """
        table = self.with_versions(chosen_versions(stack))
        components = {name: entry.model_copy(update={"version": built(name, entry.version)})
                      for name, entry in table.components.items()}
        return table.model_copy(update={"components": components})

    def extra(self, component: str) -> dict[str, Any]:
        return self.components[component].model_dump()

    def pinned(self, component: str, names: list[str]) -> list[str]:
        """`name=version` for each package a role installs, as the table pins it for `component`.

        A package the table does not pin is refused: nodes must install exactly what a
        bundle carries.

        Example:
            >>> load_versions().pinned("registry", ["docker-registry"])
            ['docker-registry=2.8.2+ds1-1']
        """
        pins = self.components[component].packages
        missing = [n for n in names if n not in pins]
        if missing:
            raise InvalidInput(
                f"package {missing[0]!r} of component {component} has no version in stacks/versions.yaml; "
                f"add it under components.{component}.packages"
            )
        return [f"{n}={pins[n]}" for n in names]


def chosen_versions(stack: Stack) -> dict[str, str]:
    """The versions a stack chooses over the table's: its `versions:`, and the gpu component's
    when the stack names a driver branch in `gpu.driver_branch` (the branch is that version)."""
    out = dict(stack.versions)
    if "driver_branch" in stack.gpu.model_fields_set:
        out.setdefault("gpu", stack.gpu.driver_branch)
    return out


def built(component: str, version: str) -> str:
    """`version` with this checkout's build of Podium's wheel, for a component that runs it and
    a version that names no build yet (a release's table names the build it ran)."""
    if component not in RUNS_PODIUM_WHEEL or "+" in version:
        return version
    from podium.own_wheel import podium_build

    return f"{version}+{podium_build()}"


def public_version(version: str) -> str:
    """A version without its build label: 0.1.0+0123456789ab → 0.1.0."""
    return version.split("+", 1)[0]


def _pinned_name(requirement: str, version: str) -> str | None:
    """`name` (with any extras) when `requirement` is exactly `name==version`, else None."""
    match = re.fullmatch(r"([A-Za-z0-9][A-Za-z0-9._-]*(\[[A-Za-z0-9._,-]+\])?)==" + re.escape(version), requirement)
    return match.group(1) if match else None


def _repin(requirement: str, old: str, new: str) -> str:
    """`name==old` becomes `name==new`; any other requirement stays."""
    name = _pinned_name(requirement, old)
    return f"{name}=={new}" if name else requirement


@contextmanager
def table_in_use(path: Path) -> Iterator[None]:
    """Within this block the roles (which call load_versions()) read `path`: a rollback
    installs exactly the pins of the release it goes back to."""
    _in_use.append(path)
    try:
        yield
    finally:
        _in_use.pop()


def load_versions(path: Path | None = None) -> VersionTable:
    path = path or (_in_use[-1] if _in_use else DEFAULT_TABLE)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
        return VersionTable.model_validate(data)
    except FileNotFoundError:
        raise InvalidInput(f"version table {path} is missing; restore stacks/versions.yaml") from None
    except (yaml.YAMLError, ValidationError) as exc:
        first = str(exc).splitlines()[:3]
        raise InvalidInput(f"version table {path} does not load: {' '.join(first)}") from None
