"""The host layer: run a component's pyinfra role on its hosts through pyinfra's Python API, and
read or record each host's state."""

from __future__ import annotations

import contextlib
import importlib
import json
import logging
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from io import StringIO
from typing import Any

from pyinfra.api.config import Config
from pyinfra.api.connect import connect_all, disconnect_all
from pyinfra.api.deploy import add_deploy
from pyinfra.api.exceptions import PyinfraError
from pyinfra.api.inventory import Inventory
from pyinfra.api.operations import run_ops
from pyinfra.api.state import State, StateStage
from pyinfra.facts.server import Command
from pyinfra.operations import files

from podium.errors import PodiumError
from podium.inventory import HostEntry
from podium.plan.state import STATE_PATH, HostState, parse_state
from podium.render import REPO

VERBS = ("deploy", "check", "remove")
# Why a host failed when pyinfra could not reach it: nothing ran there.
UNREACHABLE = "could not connect over SSH"


@dataclass
class ComponentRun:
    component: str
    verb: str
    hosts: list[str]
    changes: int = 0
    failed: dict[str, str] = field(default_factory=dict)
    # Where the run's time went, in seconds: SSH connections, the role's deploy code with its
    # facts (prepare), the operations (execute).
    seconds: dict[str, float] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.failed


def roles_module(name: str) -> Any:
    """roles.<name>, imported from the checkout (roles are not part of the wheel)."""
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    return importlib.import_module(f"roles.{name}")


def role_module(component: str) -> Any:
    """roles/<role>/tasks.py of a component."""
    role = component.replace("-", "_")
    try:
        return roles_module(f"{role}.tasks")
    except ModuleNotFoundError as exc:
        if exc.name in (f"roles.{role}", f"roles.{role}.tasks"):
            raise PodiumError(f"component {component} has no role at roles/{role}/tasks.py") from None
        raise


# Within kept_connections(): host and SSH settings → the paramiko client of that host.
_kept: dict[tuple[str, str], Any] | None = None


@contextmanager
def kept_connections() -> Iterator[None]:
    """Each host's SSH connection opened once and used by every run inside (`podium up` runs a
    pyinfra state per component: a new connection each was a second of a reapply), closed at the
    end."""
    global _kept
    if _kept is not None:
        yield
        return
    _kept = {}
    try:
        yield
    finally:
        clients, _kept = list(_kept.values()), None
        for client in clients:
            with contextlib.suppress(Exception):
                client.close()


def _connection_key(host: Any) -> tuple[str, str]:
    ssh = {k: v for k, v in host.data.dict().items() if k.startswith("ssh_")}
    return host.name, json.dumps(ssh, sort_keys=True, default=str)


def _reuse(state: State) -> None:
    """Hand each host a kept connection that is still open, so connect_all leaves it be."""
    for host in state.inventory:
        client = (_kept or {}).get(_connection_key(host))
        transport = client.get_transport() if client is not None else None
        if transport is not None and transport.is_active():
            connector: Any = host.connector  # pyinfra's SSH connector keeps its paramiko client
            connector.client = client
            host.connected = True


def _forget(state: State) -> None:
    for host in state.inventory:
        client = (_kept or {}).pop(_connection_key(host), None)
        if client is not None:
            with contextlib.suppress(Exception):
                client.close()


def _keep(state: State) -> None:
    for host in state.inventory.get_active_hosts():
        client = getattr(host.connector, "client", None)
        if _kept is not None and client is not None:
            _kept[_connection_key(host)] = client


@contextmanager
def connected(entries: Sequence[HostEntry], parallel: int = 20, diff: bool = True) -> Iterator[State]:
    """A pyinfra State connected to the given hosts; hosts that fail to connect are reported.

    diff: run each operation's facts while the roles are prepared, to know what would change
        before anything does (a dry run). pyinfra keeps no facts, so a run that changes things
        leaves this off: its operations read their facts once, as they run, on all hosts at once.
    """
    inventory = Inventory((list(entries), {}))
    config = Config(PARALLEL=parallel, CONNECT_TIMEOUT=10, FAIL_PERCENT=100)
    state = State(inventory, config, check_for_changes=diff)
    state.print_noop_info = False
    logging.getLogger("pyinfra").setLevel(logging.CRITICAL)
    try:
        state.set_stage(StateStage.Connect)
        if _kept is not None:
            _reuse(state)
        connect_all(state)
        if _kept is not None:
            _keep(state)
        yield state
    finally:
        state.set_stage(StateStage.Disconnect)
        if _kept is None:
            disconnect_all(state)


def unreachable(state: State, entries: Sequence[HostEntry]) -> list[str]:
    active = {h.name for h in state.inventory.get_active_hosts()}
    return [name for name, _ in entries if name not in active]


def read_states(entries: Sequence[HostEntry]) -> dict[str, HostState]:
    """Each reachable host's recorded state; a host never provisioned has none."""
    texts = read_node_files(entries, [STATE_PATH])
    return {h: parse_state(t[STATE_PATH], f"{h}:{STATE_PATH}") for h, t in texts.items() if STATE_PATH in t}


def write_states(entries: Sequence[HostEntry], states: Mapping[str, HostState]) -> None:
    """Record each host's state as given (after a failed run: see HostState.unsettle)."""
    with connected(entries) as state:
        state.set_stage(StateStage.Prepare)
        for host in state.inventory.get_active_hosts():
            if host.name in states:
                add_deploy(state, _record_state, states[host.name].to_json(), host=host)
        state.set_stage(StateStage.Execute)
        with contextlib.suppress(PyinfraError):
            run_ops(state)


def read_node_files(entries: Sequence[HostEntry], paths: Sequence[str]) -> dict[str, dict[str, str]]:
    """host → path → text of the given files on every host, over one connection each; a file a
    host lacks (or that is empty) is left out."""
    out: dict[str, dict[str, str]] = {}
    with connected(entries) as state:
        missing = unreachable(state, entries)
        if missing:
            raise PodiumError(f"cannot reach {', '.join(missing)} over SSH; is the machine up?")
        for host in state.inventory.get_active_hosts():
            for path in paths:
                text = host.get_fact(Command, command=f"cat {path} 2>/dev/null || true")
                if text and text.strip():
                    out.setdefault(host.name, {})[path] = text
    return out


def run_component(
    entries: Sequence[HostEntry],
    component: str,
    verb: str = "deploy",
    *,
    dry_run: bool = False,
    record: Callable[[str], HostState | None] | None = None,
) -> ComponentRun:
    """Run one verb of a component's role on the given hosts, in parallel; when `record` gives a
    host's new state, write it to the host after the role succeeded there."""
    if verb not in VERBS:
        raise PodiumError(f"verb {verb!r} is not one of {', '.join(VERBS)}")
    module = role_module(component)
    func = getattr(module, verb)
    result = ComponentRun(component, verb, [name for name, _ in entries])
    clock = time.perf_counter()
    with connected(entries, diff=dry_run) as state:
        clock = _lap(result, "connect", clock)
        for name in unreachable(state, entries):
            result.failed[name] = UNREACHABLE
        state.set_stage(StateStage.Prepare)
        try:
            add_deploy(state, func)
            if record and not dry_run:
                for host in state.inventory.get_active_hosts():
                    new = record(host.name)
                    if new is not None:
                        add_deploy(state, _record_state, new.to_json(), host=host)
        except PyinfraError as exc:
            raise PodiumError(f"{component}: the role could not be prepared: {exc}") from None
        clock = _lap(result, "prepare", clock)
        if dry_run:
            result.changes = _will_change(state)
            return result
        state.set_stage(StateStage.Execute)
        # When every host failed pyinfra raises; the per-host errors below say why.
        with contextlib.suppress(PyinfraError):
            run_ops(state)
        _lap(result, "execute", clock)
        result.changes += _did_change(state)
        if result.changes and getattr(module, "RESETS_CONNECTIONS", False):
            # The role changed what the hosts' SSH connections run over: later runs connect afresh.
            _forget(state)
        for host in state.inventory:
            if host.name in result.failed:
                continue
            if not _all_succeeded(state, host):
                result.failed[host.name] = _first_error(state, host)
    return result


def _lap(run: ComponentRun, phase: str, since: float) -> float:
    now = time.perf_counter()
    run.seconds[phase] = now - since
    return now


def _record_state(text: str) -> None:
    files.directory(name="Podium state folder", path="/var/lib/podium", mode="755")
    files.put(name="Record Podium state", src=StringIO(text), dest=STATE_PATH, mode="644")


def _ops(state: State, host: Any) -> Iterator[Any]:
    for op_hash in state.get_op_order():
        # Recording state is bookkeeping, not a change to the appliance.
        if any("Podium state" in n for n in state.get_op_meta(op_hash).names):
            continue
        try:
            yield state.get_op_data_for_host(host, op_hash).operation_meta
        except KeyError:
            continue


def _did_change(state: State) -> int:
    count = 0
    for host in state.inventory.get_active_hosts():
        for meta in _ops(state, host):
            if meta.is_complete() and meta.did_change():
                count += 1
    return count


def _will_change(state: State) -> int:
    count = 0
    for host in state.inventory.get_active_hosts():
        for meta in _ops(state, host):
            with _host_context(state, host):
                if meta.will_change:
                    count += 1
    return count


@contextmanager
def _host_context(state: State, host: Any) -> Iterator[None]:
    from pyinfra.context import ctx_host, ctx_state

    with ctx_state.use(state), ctx_host.use(host):
        yield


def _all_succeeded(state: State, host: Any) -> bool:
    metas = list(_ops(state, host))
    return all(m.is_complete() and m.did_succeed() for m in metas)


def _first_error(state: State, host: Any) -> str:
    for op_hash in state.get_op_order():
        try:
            data = state.get_op_data_for_host(host, op_hash)
        except KeyError:
            continue
        meta = data.operation_meta
        if not meta.is_complete() or not meta.did_succeed():
            name = ", ".join(sorted(state.get_op_meta(op_hash).names)) or op_hash
            output = ""
            try:
                output = "; ".join(line for line in meta.stderr_lines[-3:]) if meta.is_complete() else ""
            except Exception:  # the output is a best-effort hint only
                output = ""
            return f"operation '{name}' failed" + (f": {output}" if output else " (did not run)")
    return "failed"
