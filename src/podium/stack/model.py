"""The whole declaration of one appliance: `stacks/<name>/stack.yaml` as a pydantic model."""

from __future__ import annotations

from pathlib import Path

from pydantic import PrivateAttr

from podium.stack.nodes import HostNetwork, Node, Strict
from podium.stack.sections import (
    Engine,
    Gateway,
    Gpu,
    Kubernetes,
    Model,
    Monitoring,
    Network,
    Registry,
    Storage,
)
from podium.stack.types import Name, Text, Url, Version, Word

# Keys that were removed or renamed, and what replaced them: a stack using one gets told.
RENAMED_KEYS: dict[tuple[str, ...], str] = {
    ("engines", "*", "placement"): "`placement` was renamed to `nodes` in 0.1",
    ("engines", "*", "gpus"): "`gpus` was renamed to `gpus_per_replica` in 0.1",
    ("nodes", "*", "host"): "`host` was renamed to `address` in 0.1",
    ("storage", "replica"): "`replica` was renamed to `replicas` in 0.1",
    ("gateway", "api_keys"): "`api_keys` was renamed to `keys` in 0.1",
    ("monitoring", "ttft_slo"): "`ttft_slo` was renamed to `ttft_slo_seconds` in 0.1",
}


class Stack(Strict):
    name: Name
    description: Text = ""
    # Where packages and artifacts come from when nodes have no internet.
    artifact_mirror: Url | None = None
    host_network: HostNetwork | None = None
    nodes: list[Node]
    network: Network = Network()
    storage: Storage | None = None
    gpu: Gpu = Gpu()
    registry: Registry | None = None
    models: list[Model] = []
    engines: list[Engine] = []
    monitoring: Monitoring | None = None
    gateway: Gateway | None = None
    kubernetes: Kubernetes | None = None
    # Per-component version overrides of stacks/versions.yaml.
    versions: dict[Word, Version] = {}

    _folder: Path = PrivateAttr(default=Path("."))

    @property
    def folder(self) -> Path:
        return self._folder

    def node(self, name: str) -> Node:
        for node in self.nodes:
            if node.name == name:
                return node
        raise KeyError(name)

    def model(self, ref: str) -> Model:
        """The model an engine's `name:version` or `name:alias` reference points at."""
        name, _, tag = ref.partition(":")
        for model in self.models:
            if model.name == name and (model.version == tag or tag in model.aliases):
                return model
        raise KeyError(ref)

    def engine(self, name: str) -> Engine:
        for engine in self.engines:
            if engine.name == name:
                return engine
        raise KeyError(name)

    @property
    def node_names(self) -> list[str]:
        return [node.name for node in self.nodes]
