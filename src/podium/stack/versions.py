"""The version table (`stacks/versions.yaml`): one pinned version per component, with the
packages and artifacts (and their sha256) that version means."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError, model_validator

from podium.errors import InvalidInput
from podium.stack.model import Stack

DEFAULT_TABLE = Path(__file__).resolve().parents[3] / "stacks" / "versions.yaml"


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


class VersionTable(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    format: int
    release: str
    components: dict[str, ComponentVersion]

    def version(self, component: str, stack: Stack | None = None) -> str:
        """The version a stack asks for: its override, else the table's pin."""
        if stack is not None and component in stack.versions:
            return stack.versions[component]
        return self.components[component].version

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


def load_versions(path: Path | None = None) -> VersionTable:
    path = path or DEFAULT_TABLE
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
        return VersionTable.model_validate(data)
    except FileNotFoundError:
        raise InvalidInput(f"version table {path} is missing; restore stacks/versions.yaml") from None
    except (yaml.YAMLError, ValidationError) as exc:
        first = str(exc).splitlines()[:3]
        raise InvalidInput(f"version table {path} does not load: {' '.join(first)}") from None
