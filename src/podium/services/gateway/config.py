"""The gateway's configuration file: a YAML document validated by pydantic."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    IPvAnyNetwork,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from podium.errors import InvalidInput

_QUOTA = re.compile(r"^\s*(\d+)\s*/\s*(day|month)\s*$")


def parse_quota(text: str) -> tuple[int, str]:
    """'100000/day' -> (100000, 'day'); the period is 'day' or 'month' (UTC).

    Example: parse_quota("5000/month") == (5000, "month")
    """
    match = _QUOTA.match(text)
    if not match:
        raise InvalidInput(
            f"quota {text!r} is not understood; write it as N/day or N/month, e.g. 100000/day"
        )
    return int(match.group(1)), match.group(2)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Listen(_Strict):
    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=0, le=65535)


class Tls(_Strict):
    cert: Path
    key: Path


class Price(_Strict):
    """Price in the appliance's currency per 1,000 tokens."""

    prompt_per_1k: float = Field(default=0.0, ge=0)
    completion_per_1k: float = Field(default=0.0, ge=0)


class ModelConfig(_Strict):
    kind: Literal["llm", "predictive"] = "llm"
    replicas: list[str] = Field(min_length=1)
    # The model name the engine knows; defaults to the public name.
    served_name: str | None = None
    price: Price = Field(default_factory=Price)
    # Path probed by active health checks; defaults by kind (/health, /v2/health/ready).
    health_path: str | None = None
    # Requests one replica may hold at once; more wait on another replica or get 503.
    max_outstanding_per_replica: int = Field(default=64, ge=1)
    # Completion tokens for a request that names no max_tokens: sent to the engine as its
    # cap, and reserved against the key's token limits until the request is recorded.
    default_max_tokens: int = Field(default=1024, ge=1)
    # A predictive engine's own Open Inference Protocol gRPC endpoint (HOST:PORT), one per
    # replica in the order of `replicas`: gRPC calls go there, REST ones to `replicas`.
    # None: gRPC calls are forwarded over REST.
    grpc_replicas: list[str] | None = None

    @field_validator("replicas")
    @classmethod
    def _urls(cls, urls: list[str]) -> list[str]:
        for url in urls:
            if not re.match(r"^https?://[^/\s]+(/.*)?$", url):
                raise ValueError(f"replica {url!r} must be an http:// or https:// URL")
        return [url.rstrip("/") for url in urls]

    @model_validator(mode="after")
    def _grpc_replicas(self) -> ModelConfig:
        targets = self.grpc_replicas
        if targets is None:
            return self
        if self.kind != "predictive":
            raise ValueError("grpc_replicas is for predictive models (the Open Inference Protocol); "
                             "remove it from this llm model")
        if len(targets) != len(self.replicas):
            raise ValueError(f"grpc_replicas names {len(targets)} endpoints for {len(self.replicas)}"
                             " replicas; give one HOST:PORT per replica, in the same order")
        for target in targets:
            if not re.fullmatch(r"[A-Za-z0-9.\-]+:\d{1,5}|\[[0-9A-Fa-f:]+\]:\d{1,5}", target):
                raise ValueError(f"grpc replica {target!r} must be HOST:PORT, e.g. 10.0.0.5:8091")
        return self

    def grpc_target(self, replica_url: str) -> str | None:
        """The gRPC endpoint of the replica answering REST at `replica_url`, if it has one."""
        if self.grpc_replicas is None:
            return None
        return self.grpc_replicas[self.replicas.index(replica_url)]

    def probe_path(self) -> str:
        if self.health_path:
            return self.health_path
        return "/health" if self.kind == "llm" else "/v2/health/ready"


class Limits(_Strict):
    """Defaults for keys that do not set their own; None means unlimited."""

    rpm: int | None = Field(default=None, ge=0)
    tpm: int | None = Field(default=None, ge=0)
    quota: str | None = None

    @field_validator("quota")
    @classmethod
    def _quota(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                parse_quota(value)
            except InvalidInput as exc:  # pydantic names file and field only for ValueError
                raise ValueError(str(exc)) from None
        return value


class Health(_Strict):
    interval_s: float = Field(default=2.0, gt=0)
    timeout_s: float = Field(default=1.0, gt=0)
    # Consecutive failures (probes or requests) that take a replica out of rotation.
    eject_after: int = Field(default=3, ge=1)


class Timeouts(_Strict):
    connect_s: float = Field(default=3.0, gt=0)
    # Until the engine sends response headers (a long prompt is processed before that).
    first_byte_s: float = Field(default=300.0, gt=0)
    # Between two reads of a response body, i.e. the longest pause between tokens.
    read_s: float = Field(default=120.0, gt=0)


class Connections(_Strict):
    """What one client may hold of the gateway; passing a bound closes its connection."""

    # Request line and headers together (431 past it); SDKs send well under 8 KiB.
    max_header_bytes: int = Field(default=65536, ge=1024, le=16 * 1024 * 1024)
    # From a connection's opening, or a request's first byte, to the end of its headers (408).
    header_timeout_s: float = Field(default=10.0, gt=0)
    # From the end of the headers to the end of the body; bodies are at most 16 MiB (408).
    body_timeout_s: float = Field(default=60.0, gt=0)
    # How long an answer waits on a client that has stopped reading before it is cut off.
    write_timeout_s: float = Field(default=60.0, gt=0)
    # Connections open at once, all clients together; one more is answered 503 and closed.
    max_connections: int = Field(default=4096, ge=1)
    # Idle time allowed between two requests on one connection.
    keep_alive_s: int = Field(default=5, ge=1)


class UsageRetention(_Strict):
    # Raw per-request records older than this are rolled up per day, key and model.
    retention_days: int = Field(default=30, ge=1)
    rollup_interval_s: float = Field(default=3600.0, gt=0)
    # How often records spooled while the store was unreachable are offered to it again.
    spool_retry_s: float = Field(default=5.0, gt=0)


class Console(_Strict):
    """The operator console under /console (console.py); absent: not served."""

    # Client addresses it answers, the stack's admin_sources; any other gets 403.
    sources: list[IPvAnyNetwork] = Field(min_length=1)
    # How long a login lasts without being used.
    session_s: float = Field(default=8 * 3600.0, gt=0, le=7 * 86400)
    # This node's release records (/var/lib/podium/releases); None: the page says so.
    releases_dir: Path | None = None
    # The stack's Prometheus, for rates and percentiles over all gateways; None: this one's.
    prometheus_url: str | None = None


class GatewayConfig(_Strict):
    listen: Listen = Field(default_factory=Listen)
    # /metrics only, for Prometheus; default: listen's host, the port after listen's.
    metrics_listen: Listen | None = None
    # The control machine's replica admin (drain, undrain), behind the admin token; the
    # firewall opens it to the admin sources only. None: not served.
    admin_listen: Listen | None = None
    # The Open Inference Protocol's gRPC service (grpc_service.py). None: not served.
    grpc_listen: Listen | None = None
    # Its certificate when it needs one apart from `tls`: gRPC's TLS library cannot check an
    # IP address against a CA's name constraints, so this one names the node by DNS only.
    grpc_tls: Tls | None = None
    # On SIGTERM, how long requests in flight (streams included) have to finish before exit.
    shutdown_grace_s: float = Field(default=30.0, gt=0, le=3600)
    connections: Connections = Field(default_factory=Connections)
    tls: Tls | None = None
    store: str = "sqlite:///podium-gateway.db"
    admin_token_sha256: str | None = Field(default=None, pattern=r"^[0-9a-f]{64}$")
    admin_token_file: Path | None = None
    models: dict[str, ModelConfig] = Field(default_factory=dict)
    limits: Limits = Field(default_factory=Limits)
    health: Health = Field(default_factory=Health)
    timeouts: Timeouts = Field(default_factory=Timeouts)
    usage: UsageRetention = Field(default_factory=UsageRetention)
    # Requests in flight in each gateway process before it answers 503.
    max_in_flight: int = Field(default=1024, ge=1)
    # Processes serving the API, each on a core of its own, sharing the listeners and the
    # store (workers.py).
    workers: int = Field(default=1, ge=1, le=512)
    # How long a key lookup is trusted; bounds how late a revocation takes effect.
    key_cache_s: float = Field(default=1.0, ge=0, le=5)
    # The gateway's own files (the usage spool); relative to the config file's folder.
    state_dir: Path = Path(".")
    console: Console | None = None

    @field_validator("store")
    @classmethod
    def _store(cls, url: str) -> str:
        if not url.startswith(("sqlite://", "postgresql")):
            raise ValueError("store must be sqlite:///PATH or postgresql+psycopg://...")
        return url

    @field_validator("metrics_listen")
    @classmethod
    def _metrics_apart(cls, value: Listen | None, info: ValidationInfo) -> Listen | None:
        listen = info.data.get("listen")
        if value is not None and listen is not None and value.port == listen.port:
            raise ValueError(f"port {value.port} is the API's own port; choose another")
        return value

    @model_validator(mode="after")
    def _metrics_port(self) -> GatewayConfig:
        if self.metrics_address()[1] > 65535:
            raise ValueError("listen.port is 65535, so metrics_listen.port must be set")
        admin = self.admin_listen
        if admin is not None and admin.port in (self.listen.port, self.metrics_address()[1]):
            raise ValueError(
                f"admin_listen.port {admin.port} is the API's or the metrics listener's port;"
                " choose another")
        grpc_port = self.grpc_listen.port if self.grpc_listen else None
        if grpc_port is not None and grpc_port in (self.listen.port, self.metrics_address()[1],
                                                   admin.port if admin else None):
            raise ValueError(f"grpc_listen.port {grpc_port} is taken by another listener of the"
                             " gateway; choose another")
        return self

    def metrics_address(self) -> tuple[str, int]:
        """Where /metrics is served: its own listener, never the API's."""
        if self.metrics_listen is not None:
            return self.metrics_listen.host, self.metrics_listen.port
        return self.listen.host, self.listen.port + 1

    def admin_token_hash(self) -> str | None:
        """The sha256 of the admin token, read from the file when one is named."""
        if self.admin_token_sha256:
            return self.admin_token_sha256
        if self.admin_token_file is None:
            return None
        try:
            token = self.admin_token_file.read_text().strip()
        except OSError as exc:
            raise InvalidInput(
                f"admin_token_file {str(self.admin_token_file)!r} cannot be read ({exc.strerror});"
                " create it with `podium gateway admin-token FILE`"
            ) from exc
        return hashlib.sha256(token.encode()).hexdigest()


def load_config(path: Path) -> GatewayConfig:
    """Read and validate a gateway config file; every error names file, field and value."""
    try:
        raw = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise InvalidInput(f"gateway config {str(path)!r} cannot be read ({exc.strerror})") from exc
    except yaml.YAMLError as exc:
        raise InvalidInput(f"gateway config {str(path)!r} is not valid YAML: {exc}") from exc
    if not isinstance(raw, dict):
        raise InvalidInput(f"gateway config {str(path)!r} must be a mapping of settings")
    try:
        config = GatewayConfig.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "(top level)"
        given = repr(first.get("input"))
        if where == "store":  # its password must not reach a log
            from podium.services.gateway.store import redacted

            given = redacted(given)
        raise InvalidInput(
            f"gateway config {str(path)!r}, field {where!r}: {first['msg']} (value given: {given})"
        ) from exc
    base = path.parent
    updates: dict[str, object] = {}
    if config.admin_token_file and not config.admin_token_file.is_absolute():
        updates["admin_token_file"] = base / config.admin_token_file
    if not config.state_dir.is_absolute():
        updates["state_dir"] = base / config.state_dir
    if config.tls and not config.tls.cert.is_absolute():
        updates["tls"] = Tls(cert=base / config.tls.cert, key=base / config.tls.key)
    if config.grpc_tls and not config.grpc_tls.cert.is_absolute():
        updates["grpc_tls"] = Tls(cert=base / config.grpc_tls.cert, key=base / config.grpc_tls.key)
    return config.model_copy(update=updates) if updates else config
