"""`podium up`: read each host's recorded state, plan, then run the plan component by component
(all hosts of a component in parallel), recording state on a host as soon as it succeeded there."""

from __future__ import annotations

import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from rich.console import Console

from podium import rolling
from podium.drivers.pyinfra_runner import UNREACHABLE, ComponentRun, read_states, run_component, write_states
from podium.errors import InvalidInput, PodiumError
from podium.inventory import HostEntry, connection, host_entries
from podium.plan.actions import Action, make_plan
from podium.plan.components import COMPONENT_NAMES, COMPONENTS
from podium.plan.state import HostState
from podium.registry.ca import CaScope, ca_certificate
from podium.stack.model import Stack
from podium.stack.versions import VersionTable, load_versions

# The digest a dry run shows for a model version the registry does not hold yet.
NOT_PUSHED = "not-pushed-yet"


@dataclass
class UpResult:
    actions: list[Action]
    changes: int = 0
    ran: list[str] = field(default_factory=list)
    # The release the run recorded (or left current); None for a dry or partial run.
    release: int | None = None


def recorded_states(stack: Stack) -> dict[str, HostState]:
    require_machines(stack)
    entries = [(n, connection(stack, n)) for n in stack.node_names]
    return read_states(entries)


def preflight(stack: Stack, actions: Sequence[Action], versions: VersionTable | None = None) -> None:
    """Refuse, before touching a host, what a role would only find out halfway.

    versions: the stack's effective table, when the caller has it already.
    """
    versions = versions or load_versions().for_stack(stack)
    _check_bundle(stack, versions)
    kube = stack.kubernetes
    installs_k3s = any(a.component == "kubernetes" and a.action != "remove" for a in actions)
    if installs_k3s and kube and kube.distribution == "k3s" and not stack.mirror_url:
        raise InvalidInput(
            f"stack {stack.name}: kubernetes.distribution k3s is installed from the artifact mirror, "
            "but artifact_mirror is not set; name the mirror that holds k3s and its air-gap images"
        )
    if installs_k3s:
        for key, art in versions.components["kubernetes"].artifacts.items():
            if art.sha256 is None:
                raise InvalidInput(
                    f"stack {stack.name}: k3s file {art.file} is operator-supplied and stacks/versions.yaml "
                    f"records no sha256 for it; put it in the bundle's slots/kubernetes/ and record its "
                    f"digest as components.kubernetes.artifacts.{key}.sha256"
                )


def _check_bundle(stack: Stack, versions: VersionTable) -> None:
    """A bundle is shipped only whole and as its manifest describes it: `podium bundle verify`."""
    from podium.bundle.manifest import MANIFEST, recorded_slots, verify

    folder, bundle = stack.bundle_folder, stack.mirror_bundle
    if folder is None or bundle is None:
        return
    if not (folder / MANIFEST).is_file():
        raise InvalidInput(
            f"stack {stack.name}: artifact_mirror.bundle {bundle.bundle!r} ({folder}) holds no bundle yet; "
            f"write it with `podium bundle {stack.folder} --out {folder}`"
        )
    problems = verify(folder, recorded_slots(folder, versions))
    if problems:
        raise InvalidInput(
            f"stack {stack.name}: bundle {folder} fails `podium bundle verify` ({problems[0]}"
            f"{f' and {len(problems) - 1} more' if len(problems) > 1 else ''}); rebuild it or replace the file"
        )


def require_machines(stack: Stack) -> None:
    """Machines Podium creates sit on a host-only network this computer holds the gateway of
    (the lab's bridge, or Vagrant's network). Without it their addresses would be sent to the
    default route, so refuse before any packet leaves."""
    net = stack.host_network
    local = [
        n
        for n in stack.nodes
        if n.machine and (n.machine.driver == "nspawn" or (n.machine.hypervisor or "").startswith("qemu:///"))
    ]
    if not local or net is None:
        return
    addresses = subprocess.run(["ip", "-o", "-4", "addr", "show"], capture_output=True, text=True).stdout
    if f"inet {net.gateway}/" not in addresses:
        raise PodiumError(
            f"the machines of stack {stack.name} are not up (no interface holds {net.gateway}); "
            f"run podium lab up {stack.name}"
        )


def up(
    stack: Stack,
    *,
    limit: Sequence[str] = (),
    only: Sequence[str] = (),
    dry_run: bool = False,
    reapply: bool = False,
    console: Console | None = None,
    versions: VersionTable | None = None,
    pinned_models: Mapping[str, str] | None = None,
    kind: str = "up",
) -> UpResult:
    """versions: the table to run from (a rollback's snapshot); pinned_models: engine model
    reference → digest to serve whatever the registry's tags say now (a rollback's)."""
    console = console or Console(stderr=True)
    for name in limit:
        if name not in stack.node_names:
            raise InvalidInput(
                f"--limit {name}: not a node of {stack.name}; nodes: {', '.join(stack.node_names)}"
            )
    for name in only:
        if name not in COMPONENT_NAMES:
            raise InvalidInput(f"--only {name}: not a component; components: {', '.join(COMPONENT_NAMES)}")
    versions = (versions or load_versions()).for_stack(stack)
    preflight(stack, make_plan(stack, versions), versions)
    # Before any role runs: base installs the CA on every node, registry and gateway sign with
    # it; made (or remade, when nodes changed) for the stack's own names and addresses only.
    ca_certificate(stack.name, CaScope.of(stack), replace=not (limit or only))
    with console.status("reading recorded state from the hosts"):
        states = recorded_states(stack)
    # Push models added since the registry was laid down; a dry run only reads the registry.
    digests = _pinned(_model_digests(stack, states, push=True, dry_run=dry_run), pinned_models)
    actions = make_plan(stack, versions, states, digests)
    entries = dict(host_entries(stack, actions))
    result = UpResult(actions)
    if dry_run:
        from podium.gateway_access import show_key_plan
        from podium.releases.book import ReleaseBook
        from podium.releases.publish import show_preview

        book = ReleaseBook(stack.name)
        show_preview(console, book, actions)
        show_key_plan(console, stack, book)
    new_states = {h: states.get(h, HostState(host=h)).model_copy(deep=True) for h in stack.node_names}
    for h, s in states.items():
        new_states.setdefault(h, s.model_copy(deep=True))

    def selected(action: Action) -> bool:
        return (not limit or action.host in limit) and (not only or action.component in only)

    for component in COMPONENTS:
        skip = ("remove",) if reapply else ("keep", "remove")
        due = [a for a in actions if a.component == component.name and a.action not in skip]
        due = [a for a in due if selected(a)]
        if not due:
            continue
        by_host = {a.host: a for a in due}

        def record(host: str, by_host: dict[str, Action] = by_host, name: str = component.name) -> HostState | None:
            action = by_host[host]
            assert action.to_version is not None and action.config_hash is not None
            if _recorded_as(states.get(host), name, action):
                # The node already records it so (a reapply): nothing to write, no new time.
                return None
            new_states[host].record(name, action.to_version, action.config_hash)
            return new_states[host].model_copy(deep=True)

        hosts: list[HostEntry] = [(h, entries[h]) for h in by_host]
        label = ", ".join(f"{a.host} ({a.action})" for a in due)
        if rolling.rolls(component.name, due, dry_run):
            # Engines and gateways change one host at a time, drained, each ready before the next.
            try:
                run = rolling.roll(stack, component.name, due, entries, record, states, console)
            except rolling.RollStopped as stop:
                _unsettle(component.name, {stop.host: str(stop)}, new_states, entries)
                raise
        else:
            with console.status(f"{component.name}: {label}"):
                run = run_component(hosts, component.name, "deploy", dry_run=dry_run, record=record)
        _report(console, run.component, run, dry_run)
        result.changes += run.changes
        result.ran.append(component.name)
        if run.failed:
            _unsettle(component.name, run.failed, new_states, entries)
            host, why = next(iter(run.failed.items()))
            raise PodiumError(f"{component.name} failed on {host}: {why}")
        if component.name == "registry" and not dry_run:
            # With the registry up, push the stack's missing models and plan the engines
            # against the digests their references resolve to.
            digests = _pinned(_model_digests(stack, new_states, push=True, dry_run=dry_run), pinned_models)
            actions = make_plan(stack, versions, states, digests)
            entries = dict(host_entries(stack, actions))
            result.actions = actions

    if stack.kubernetes and (not only or "kubernetes" in only) and not limit:
        from podium.cluster.up import apply_cluster

        result.changes += apply_cluster(stack, versions, console, dry_run)

    removals = [a for a in actions if a.action == "remove" and selected(a)]
    for action in removals:
        entry = (action.host, {**entries.get(action.host, connection(stack, action.host))})

        def drop(host: str, name: str = action.component) -> HostState:
            new_states[host].components.pop(name, None)
            return new_states[host].model_copy(deep=True)

        with console.status(f"{action.component}: removing from {action.host}"):
            run = run_component([entry], action.component, "remove", dry_run=dry_run, record=drop)
        _report(console, f"{action.component} (remove)", run, dry_run)
        result.changes += run.changes
        if run.failed:
            raise PodiumError(
                f"removing {action.component} failed on {action.host}: {run.failed[action.host]}"
            )
    if not (dry_run or limit or only):
        rolling.undrain_left(stack, new_states, console)
        # Only a whole run lays down a release; --limit and --only leave the current one.
        from podium.releases.publish import publish

        release = publish(stack, versions, new_states, actions, list(entries.items()), digests, kind, console)
        result.release = release.number
    if not dry_run:
        _audit(stack, kind, result, limit, only, console)
    return result


def _unsettle(component: str, failed: Mapping[str, str], states: dict[str, HostState],
              entries: Mapping[str, dict[str, Any]]) -> None:
    """Record `component` as unsettled on the hosts where it failed: what the role left there
    matches no release, so the next run lays it down again, even a rollback to the release the
    host recorded before (which would otherwise find it unchanged and keep it)."""
    reachable = [h for h in failed if h in entries and failed[h] != UNREACHABLE]
    for host in reachable:
        states[host].unsettle(component)
    if reachable:
        write_states([(h, entries[h]) for h in reachable], {h: states[h] for h in reachable})


def _audit(stack: Stack, kind: str, result: UpResult, limit: Sequence[str], only: Sequence[str],
           console: Console) -> None:
    """Every run that may have changed the stack goes into the gateway's audit log."""
    if stack.gateway is None:
        return
    from podium.gateway_access import report_action

    action = "stack.rollback" if kind.startswith("rollback") else "stack.up"
    detail: dict[str, object] = {"changes": result.changes, "release": result.release,
                                 "limit": list(limit), "only": list(only), "kind": kind}
    problem = report_action(stack, action, stack.name, detail)
    if problem:
        console.print(f"[yellow]warning:[/] {problem}")


def _pinned(digests: dict[str, str] | None, pinned: Mapping[str, str] | None) -> dict[str, str] | None:
    return digests if digests is None or not pinned else {**digests, **pinned}


def _recorded_as(state: HostState | None, component: str, action: Action) -> bool:
    recorded = state.components.get(component) if state else None
    return recorded is not None and (recorded.version, recorded.config_hash) == (action.to_version, action.config_hash)


def _report(console: Console, what: str, run: ComponentRun, dry_run: bool) -> None:
    verb = "would change" if dry_run else "changed"
    mark = "[red]✗[/]" if run.failed else "[green]✓[/]"
    # Where the time went, so a slow convergence can be told apart from a slow connection.
    phases = ", ".join(f"{phase} {seconds:.1f}" for phase, seconds in run.seconds.items())
    took = f" in {sum(run.seconds.values()):.1f} s ({phases})" if phases else ""
    console.print(f"{mark} {what}: {verb} {run.changes}{took}")


def _model_digests(
    stack: Stack, states: dict[str, HostState], *, push: bool, dry_run: bool
) -> dict[str, str] | None:
    """Engine model reference → digest, once the stack's registry is recorded on its node."""
    if not stack.registry or not stack.models:
        return None
    recorded = states.get(stack.registry.node)
    if recorded is None or "registry" not in recorded.components:
        return None
    from podium.registry.sync import sync_models

    if dry_run:
        # Read the registry only. A model version not pushed yet has no digest: name it so, and
        # the engine role plans its pull instead of refusing a model it cannot find there.
        found = sync_models(stack, push=False)
        # An adapter model's adapter is pulled by its own reference, beside its base.
        refs = [e.model for e in stack.engines] + [m.adapter for m in stack.models if m.adapter]
        return {ref: found.get(ref, NOT_PUSHED) for ref in refs}
    digests: dict[str, str] = sync_models(stack, push=push)
    return digests
