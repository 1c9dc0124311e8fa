"""The service sections of a stack: network, storage, GPUs, registry, models, engines, monitoring,
gateway and Kubernetes."""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Literal

from pydantic import Field, model_validator

from podium.stack.nodes import Strict
from podium.stack.types import (
    AbsPath,
    Address,
    AptSource,
    ArgKey,
    Duration,
    Host,
    LocalPath,
    Name,
    Port,
    PythonName,
    Source,
    Subnet,
    Text,
    Url,
    Word,
)

NodeList = list[Name]
# Lists of nodes a thing runs on: at least one.
Placement = Annotated[list[Name], Field(min_length=1)]


class Bridge(Strict):
    name: Annotated[str, Field(pattern=r"^[a-z][a-z0-9-]{0,14}$")]
    nodes: NodeList
    interfaces: list[Word] = []
    mtu: Annotated[int, Field(ge=576, le=9216)] = 1500


class Vlan(Strict):
    name: Annotated[str, Field(pattern=r"^[a-z][a-z0-9-]{0,14}$")]
    id: Annotated[int, Field(ge=1, le=4094)]
    # The interface the VLAN rides on; unset, the node's own interface (see nodes[].interface).
    parent: Word | None = None
    mtu: Annotated[int, Field(ge=576, le=9216)] = 1500
    nodes: NodeList
    # Node addresses are the subnet's hosts in node order unless given.
    subnet: Subnet


class Opening(Strict):
    """A firewall opening beyond those Podium derives from component placement."""

    port: Port
    protocol: Literal["tcp", "udp"] = "tcp"
    nodes: NodeList
    # CIDRs or node names allowed in; empty means every node of the stack.
    sources: list[Source] = []


class Network(Strict):
    bridges: list[Bridge] = []
    vlans: list[Vlan] = []
    openings: list[Opening] = []
    # NTP servers of the site; the lab syncs from its host. Never a public pool.
    ntp_servers: list[Host] = []
    # Where the control machine and administrators connect from (node names or CIDRs): SSH,
    # Prometheus, Alertmanager and Grafana open to them only. Empty: the host_network's
    # gateway (the lab host); a stack without host_network must name them.
    admin_sources: list[Source] = []


class Storage(Strict):
    driver: Literal["glusterfs", "nfs", "local"]
    nodes: Placement
    replicas: Annotated[int, Field(ge=1, le=16)] = 1
    mount: AbsPath = "/srv/podium"
    volume: Name = "podium"
    # Nodes that mount the volume; every node of the stack when unset.
    clients: NodeList | None = None
    # A VLAN name: storage traffic goes over it when set.
    network: Name | None = None


class Gpu(Strict):
    # Debian 12 packages branch 535; NVIDIA's repository or a mirror of it carries newer ones.
    driver_branch: Annotated[str, Field(pattern=r"^\d{3}$")] = "535"
    source: Literal["distribution", "nvidia", "mirror"] = "distribution"
    container_toolkit: bool = True
    persistence: bool = True


class MirrorBundle(Strict):
    """`artifact_mirror: {bundle: PATH}`: a `podium bundle` folder that `podium up` ships to one
    node of the stack, which serves it over TLS as every node's only package source."""

    # The bundle folder, relative to the stack file (or absolute).
    bundle: LocalPath
    # The node that serves it; the registry's node, else the node labelled role: control.
    node: Name | None = None
    port: Port = 8440


class Registry(Strict):
    node: Name
    port: Port = 5000
    path: AbsPath = "/srv/podium/registry"
    tls: bool = True


# name:version or name:alias of a model.
ModelTag = Annotated[str, Field(pattern=r"^[a-z][a-z0-9-]*:[A-Za-z0-9][A-Za-z0-9._-]*$")]


class Model(Strict):
    name: Name
    version: Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")]
    format: Literal["gguf", "safetensors", "skops", "joblib", "onnx"]
    # A path relative to the stack folder, or tiny:gguf|hf|sklearn|onnx for a generated test model.
    source: LocalPath
    aliases: list[Annotated[str, Field(pattern=r"^[A-Za-z][A-Za-z0-9._-]{0,63}$")]] = []
    trusted: bool = False
    # Completion tokens a request gets when it names no max_tokens; the gateway sends this
    # cap to the engine and reserves it against the key's limits until the request ends.
    default_max_tokens: Annotated[int, Field(ge=1, le=1_000_000)] = 1024
    # Types a skops file may contain beyond skops' own safe list.
    trusted_types: list[PythonName] = []
    # A LoRA adapter served over a base model of this stack: `base` is that model's name:version
    # (or alias), `adapter` the registry's name:version that `podium finetune` pushed. Such a
    # model is pulled, not pushed, so its version, format and source follow the adapter's.
    base: ModelTag | None = None
    adapter: ModelTag | None = None

    @model_validator(mode="before")
    @classmethod
    def _adapter_defaults(cls, data: object) -> object:
        if isinstance(data, dict) and isinstance(data.get("adapter"), str):
            tag = data["adapter"].partition(":")[2]
            data = {"version": tag or None, "format": "gguf", "source": data["adapter"], **data}
        return data


class Engine(Strict):
    name: Name
    kind: Literal["llamacpp", "vllm", "sglang", "predictive"]
    # name:version or name:alias of a model in `models`.
    model: ModelTag
    nodes: Placement
    replicas: Annotated[int, Field(ge=1, le=64)] = 1
    # First replica's port on a node; further replicas on the same node take the next ports.
    port: Port = 8080
    device: Literal["auto", "cpu", "gpu"] = "auto"
    gpus_per_replica: Annotated[int, Field(ge=0, le=16)] = 0
    args: dict[ArgKey, Text | int | float | bool] = {}


class Monitoring(Strict):
    node: Name
    port: Port = 9090
    retention: Duration = "15d"
    scrape_interval: Duration = "15s"
    ttft_slo_seconds: Annotated[float, Field(gt=0)] = 2.0
    # How long a condition holds before an alert fires; the lab shortens it.
    alert_for: Duration = "5m"
    webhook: Url | None = None
    # Grafana comes from a repository or mirror the site names; skipped when unset.
    grafana_repository: AptSource | None = None


Budget = Annotated[str, Field(pattern=r"^\d+(\.\d+)?/(day|month)$")]


class ApiKey(Strict):
    name: Name
    models: list[Name] | Literal["*"] = "*"
    rpm: Annotated[int, Field(ge=1)] | None = None
    tpm: Annotated[int, Field(ge=1)] | None = None
    quota: Annotated[str, Field(pattern=r"^\d+/(day|month)$")] | None = None
    # Requests the key may have in flight at once, over every gateway; more get 429.
    max_in_flight: Annotated[int, Field(ge=1)] | None = None
    expires: dt.date | None = None
    # A team of `gateway.teams`: each request must also pass the team's limits and budget.
    team: Name | None = None
    # Spend allowed per UTC day or month, in the currency of `gateway.prices`.
    budget: Budget | None = None


class Team(Strict):
    name: Name
    models: list[Name] | Literal["*"] = "*"
    rpm: Annotated[int, Field(ge=1)] | None = None
    tpm: Annotated[int, Field(ge=1)] | None = None
    budget: Budget | None = None


class Price(Strict):
    prompt: Annotated[float, Field(ge=0)]
    completion: Annotated[float, Field(ge=0)]


class Gateway(Strict):
    nodes: Placement
    port: Port = 8443
    # Prometheus scrapes /metrics here, and only the monitoring node may connect; default port + 1.
    metrics_port: Port | None = None
    # The control machine drains engine replicas here (admin token; admin sources only); default port + 2.
    admin_port: Port | None = None
    # The Open Inference Protocol's gRPC service (TLS, API keys as on the API port); default port + 3.
    grpc_port: Port | None = None
    # How long a replica being changed, or a gateway being stopped, has to finish its requests.
    drain_timeout_s: Annotated[float, Field(gt=0, le=3600)] = 60.0
    # Connections open at once per gateway node; more are answered 503 and closed.
    max_connections: Annotated[int, Field(ge=1, le=1_000_000)] = 4096
    # How long an answer waits on a client that stopped reading before it is cut off.
    write_timeout_s: Annotated[float, Field(gt=0, le=3600)] = 60.0
    # Gateway processes per node, each on a core of its own, sharing its port and store.
    workers: Annotated[int, Field(ge=1, le=512)] = 1
    tls: bool = True
    # One address clients use for every gateway node: keepalived moves it to a node whose
    # gateway answers (two or more gateway nodes; a free address of the stack's subnet).
    address: Address | None = None
    store: Literal["sqlite", "postgresql"] = "sqlite"
    # The PostgreSQL node when store is postgresql.
    store_node: Name | None = None
    keys: list[ApiKey] = []
    teams: list[Team] = []
    # Price per 1K tokens, by model name.
    prices: dict[Name, Price] = {}

    @property
    def scrape_port(self) -> int:
        """The gateway's metrics listener."""
        return self.metrics_port if self.metrics_port is not None else self.port + 1

    @property
    def control_port(self) -> int:
        """The gateway's control listener (replica drains)."""
        return self.admin_port if self.admin_port is not None else self.port + 2

    @property
    def grpc_listen_port(self) -> int:
        """The gateway's gRPC listener (Open Inference Protocol)."""
        return self.grpc_port if self.grpc_port is not None else self.port + 3


class Releases(Strict):
    # Releases whose engine versions and models nodes keep for a rollback; older ones are pruned.
    keep: Annotated[int, Field(ge=1, le=100)] = 2


class Kubernetes(Strict):
    distribution: Literal["k3s", "existing"] = "k3s"
    server: Name | None = None
    agents: NodeList = []
    kubeconfig: LocalPath | None = None
    namespace: Name = "podium"
    # Engines (by name) that run as Deployments instead of systemd units.
    engines: list[Name] = []
    gateway: bool = False
    # Fine-tuning jobs run as Kubernetes Jobs on the nodes labelled for training, not as units.
    trainer: bool = False
