"""Recorded state: what Podium last laid down on a host, kept on the node in
/var/lib/podium/state.json. Versioned so a newer Podium can read an older file."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

from podium.errors import InvalidInput

STATE_PATH = "/var/lib/podium/state.json"
# Each release a node took part in, and the current one (see podium.releases.node).
NODE_RELEASES = "/var/lib/podium/releases"
RELEASE_RECORD = f"{NODE_RELEASES}/current.json"
STATE_FORMAT = 1


class ComponentState(BaseModel):
    model_config = ConfigDict(extra="forbid")
    version: str
    config_hash: str
    applied_at: str = ""


# Prefixed to a component's config digest on a host where a run failed part-way through it.
UNSETTLED = "unsettled:"


class HostState(BaseModel):
    model_config = ConfigDict(extra="forbid")
    format: int = STATE_FORMAT
    host: str
    components: dict[str, ComponentState] = {}

    def record(self, component: str, version: str, config_hash: str) -> None:
        now = dt.datetime.now(dt.UTC).replace(microsecond=0).isoformat()
        self.components[component] = ComponentState(version=version, config_hash=config_hash, applied_at=now)

    def unsettle(self, component: str) -> None:
        """Mark what a failed run left of `component` as matching no plan, so the next run (a
        rollback to the recorded release included) lays it down again instead of keeping it."""
        recorded = self.components.get(component)
        if recorded is not None and not recorded.config_hash.startswith(UNSETTLED):
            recorded.config_hash = UNSETTLED + recorded.config_hash

    def to_json(self) -> str:
        return json.dumps(self.model_dump(), indent=2, sort_keys=True) + "\n"


def parse_state(text: str, source: str) -> HostState:
    try:
        data = json.loads(text)
        if data.get("format") != STATE_FORMAT:
            raise InvalidInput(
                f"{source}: state format {data.get('format')!r} is not {STATE_FORMAT}; "
                "upgrade Podium to read it"
            )
        return HostState.model_validate(data)
    except (json.JSONDecodeError, ValidationError, AttributeError) as exc:
        raise InvalidInput(f"{source}: not a Podium state file ({str(exc).splitlines()[0]})") from None


def parse_states(text: str, source: str) -> dict[str, HostState]:
    """A file for `--state-from`: one host's state, or a JSON list / mapping of several."""
    try:
        data: Any = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InvalidInput(f"{source}: not JSON ({exc.msg} at line {exc.lineno})") from None
    items = data.values() if isinstance(data, dict) and "host" not in data else data
    if isinstance(data, dict) and "host" in data:
        items = [data]
    states = [parse_state(json.dumps(item), source) for item in items]
    return {s.host: s for s in states}


def canonical_sha256(data: Any) -> str:
    """The sha256 (hex) of `data` as canonical JSON: equal data, equal digest."""
    canonical = json.dumps(data, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()


def config_hash(settings: dict[str, Any]) -> str:
    """A stable digest of a role's settings on one host: equal settings, equal hash."""
    return canonical_sha256(settings)[:16]
