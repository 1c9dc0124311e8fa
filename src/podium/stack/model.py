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
    MirrorBundle,
    Model,
    Monitoring,
    Network,
    Registry,
    Releases,
    Storage,
)
from podium.stack.types import Name, Text, Url, Version, Word

# The node label that asks for the trainer component (and where fine-tuning jobs run).
TRAINER_LABEL = "trainer"

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
    # Where packages and artifacts come from when nodes have no internet: a URL of the site's
    # mirror, or {bundle: PATH} for a `podium bundle` folder a node of the stack serves.
    artifact_mirror: Url | MirrorBundle | None = None
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
    releases: Releases = Releases()
    # Per-component version overrides of stacks/versions.yaml.
    versions: dict[Word, Version] = {}

    _folder: Path = PrivateAttr(default=Path("."))
    _file: Path = PrivateAttr(default=Path("stack.yaml"))

    @property
    def folder(self) -> Path:
        return self._folder

    @property
    def file(self) -> Path:
        """The stack file it was read from (a release keeps a copy of it)."""
        return self._file

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

    @property
    def trainer_nodes(self) -> list[str]:
        """Nodes labelled for fine-tuning (`labels: {trainer: "true"}`), in declared order."""
        return [node.name for node in self.nodes if node.labels.get(TRAINER_LABEL) == "true"]

    @property
    def trains_on_cluster(self) -> bool:
        """Whether fine-tuning runs as Kubernetes Jobs (`kubernetes: {trainer: true}`) rather
        than as transient units on the trainer nodes."""
        return bool(self.kubernetes and self.kubernetes.trainer)

    @property
    def mirror_bundle(self) -> MirrorBundle | None:
        """The bundle the stack serves itself, when artifact_mirror is {bundle: PATH}."""
        return self.artifact_mirror if isinstance(self.artifact_mirror, MirrorBundle) else None

    @property
    def mirror_node(self) -> str | None:
        """The node serving the bundle: as declared, else the registry's, else the control node."""
        bundle = self.mirror_bundle
        if bundle is None:
            return None
        if bundle.node:
            return bundle.node
        if self.registry:
            return self.registry.node
        control = [n.name for n in self.nodes if n.labels.get("role") == "control"]
        return (control or self.node_names)[0]

    @property
    def mirror_url(self) -> str | None:
        """Where nodes fetch packages and artifacts: the declared URL, or the bundle's node."""
        bundle = self.mirror_bundle
        if bundle is None:
            return self.artifact_mirror if isinstance(self.artifact_mirror, str) else None
        node = self.node(self.mirror_node or "")
        return f"https://{node.address}:{bundle.port}"

    @property
    def bundle_folder(self) -> Path | None:
        """The bundle folder on the control machine, relative paths taken from the stack file."""
        bundle = self.mirror_bundle
        return None if bundle is None else (self.folder / Path(bundle.bundle).expanduser()).resolve()
