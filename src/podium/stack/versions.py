"""The version table (`stacks/versions.yaml`): one pinned version per component, with the
packages and artifacts (and their sha256) that version means."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from podium.errors import InvalidInput
from podium.stack.model import Stack

DEFAULT_TABLE = Path(__file__).resolve().parents[3] / "stacks" / "versions.yaml"


class Artifact(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    file: str
    sha256: str


class ComponentVersion(BaseModel):
    model_config = ConfigDict(extra="allow", frozen=True)
    version: str
    packages: dict[str, str] = {}
    artifacts: dict[str, Artifact] = {}
    requirements: list[str] = []


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
