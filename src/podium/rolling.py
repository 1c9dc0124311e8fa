"""Rolling, drained changes: engine replicas and gateways change one host at a time, each ready before the next.

For an engine host the stack's running gateways first stop sending it new requests and wait
(bounded by `gateway.drain_timeout_s`) for those it holds; then its role runs, its replicas
must pass the readiness check `podium verify` uses, and every gateway must see them healthy
again before they are undrained and the next host starts. A gateway host is changed the same
way, one at a time; its own SIGTERM lets requests in flight finish. The first host that fails
stops the run: the hosts not reached yet keep serving the previous release, undrained.
"""

from __future__ import annotations

import ssl
import time
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from rich.console import Console

from podium.drivers.pyinfra_runner import ComponentRun, roles_module, run_component
from podium.errors import InvalidInput, PodiumError
from podium.plan.actions import Action
from podium.plan.state import HostState
from podium.stack.model import Stack
from podium.stack.ports import replicas

ENGINES = ("engine-llamacpp", "engine-vllm", "engine-sglang", "engine-predictive")
# Actions that change what a host already serves. An install serves nothing yet (no gateway
# routes to it) and a keep changes nothing (it runs only under --reapply): those hosts go
# together, all at once, as before.
ROLLED = ("upgrade", "downgrade", "reconfigure")
# How long a changed replica or gateway has to pass readiness, and gateways to see it healthy.
READY_S = 60.0


@dataclass(frozen=True)
class HostReplica:
    """An engine replica as the gateways know it: `tiny-llama-cpp/1` at its URL."""

    name: str
    url: str


def rolls(component: str, due: Sequence[Action], dry_run: bool) -> bool:
    """Whether `podium up` changes this component host by host rather than all hosts at once."""
    return (not dry_run and (component in ENGINES or component == "gateway")
            and any(a.action in ROLLED for a in due))


def host_replicas(stack: Stack, component: str, host: str) -> list[HostReplica]:
    """The replicas of `component` (an engine kind) on `host`, as the gateways address them."""
    kind = component.removeprefix("engine-")
    on_cluster = set(stack.kubernetes.engines) if stack.kubernetes else set()
    address = stack.node(host).address
    return [
        HostReplica(f"{engine.name}/{rep.index}", f"http://{address}:{rep.port}")
        for engine in stack.engines
        if engine.kind == kind and engine.name not in on_cluster
        for rep in replicas(engine)
        if rep.node == host
    ]


class Gateways:
    """The control listeners of the stack's gateways that are running (recorded on their node)."""

    def __init__(self, stack: Stack, states: dict[str, HostState], console: Console) -> None:
        from podium.gateway_access import ADMIN_TOKEN
        from podium.registry.ca import ca_certificate
        from podium.secrets import StackSecrets
        from podium.services.gateway.client import ReplicaAdmin

        self.console = console
        gw = stack.gateway
        self.wait_s = gw.drain_timeout_s if gw else 0.0
        running = [n for n in gw.nodes if "gateway" in states.get(n, HostState(host=n)).components] if gw else []
        if gw is None or not running:
            self.apis: dict[str, ReplicaAdmin] = {}
            return
        token = StackSecrets(stack.name).token(ADMIN_TOKEN)
        ca = ca_certificate(stack.name) if gw.tls else None
        scheme = "https" if gw.tls else "http"
        self.apis = {
            node: ReplicaAdmin(f"{scheme}://{stack.node(node).address}:{gw.control_port}", token,
                               timeout=self.wait_s + 30, ca_file=ca)
            for node in running
        }

    def _each(self, replicas: Sequence[HostReplica], verb: str, **kw: float) -> list[dict[str, Any]]:
        """`verb` (drain, undrain) of every replica on every gateway; their answers."""
        answers = []
        for node, api in list(self.apis.items()):
            for rep in replicas:
                try:
                    answers.append({"gateway": node, **getattr(api, verb)(rep.url, **kw)})
                except InvalidInput:
                    continue  # a replica this gateway does not route to yet (new in this run)
                except PodiumError as exc:
                    # A gateway from before control listeners existed gets one later in this run.
                    self.console.print(f"[yellow]![/] gateway on {node}: no replica drains ({exc});"
                                       " its replicas change without one")
                    del self.apis[node]
                    break
        return answers

    def drain(self, replicas: Sequence[HostReplica]) -> str:
        """Drain on every gateway at once, then wait for what each still holds; says how it went."""
        if not self.apis or not replicas:
            return "no gateway routes to it yet"
        began = time.monotonic()
        self._each(replicas, "drain")
        left = sum(a["in_flight"] for a in self._each(replicas, "drain", wait_s=self.wait_s))
        took = time.monotonic() - began
        if left:
            self.console.print(f"[yellow]![/] {left} requests still in flight after {took:.1f} s"
                               f" (gateway.drain_timeout_s); changing anyway")
        return f"drained {', '.join(r.name for r in replicas)} in {took:.1f} s"

    def undrain(self, replicas: Sequence[HostReplica]) -> list[str]:
        """Undrain everywhere; the names of replicas some gateway still does not see healthy."""
        answers = self._each(replicas, "undrain")
        deadline = time.monotonic() + READY_S
        sick = {(a["gateway"], a["replica"]) for a in answers if not a["healthy"]}
        while sick and time.monotonic() < deadline:
            time.sleep(0.5)
            sick = {(g, url) for g, url in sick if g in self.apis
                    and not any(r["replica"] == url and r["healthy"] for r in self.apis[g].replicas())}
        return [f"{rep.name} (from gateway {g})" for g, url in sorted(sick)
                for rep in replicas if rep.url == url]


def undrain_left(stack: Stack, states: dict[str, HostState], console: Console) -> list[str]:
    """Put back the replicas an earlier run left drained; their names.

    A run stopped after an engine's role has run but before its replicas were undrained (killed,
    or its control machine lost) leaves them drained for the drain's hold, and the next run finds
    that engine unchanged and never rolls it. Called once a whole run has laid every component
    down, when no drain of this run is still wanted.
    """
    gateways = Gateways(stack, states, console)
    left: set[str] = set()
    for node, api in list(gateways.apis.items()):
        try:
            left |= {r["replica"] for r in api.replicas() if r["drained"]}
        except PodiumError as exc:
            console.print(f"[yellow]![/] gateway on {node}: its replicas cannot be listed ({exc})")
    if not left:
        return []
    reps = [rep for component in ENGINES for host in stack.node_names
            for rep in host_replicas(stack, component, host) if rep.url.rstrip("/") in left]
    sick = gateways.undrain(reps)
    names = [rep.name for rep in reps]
    console.print(f"[yellow]![/] put back {', '.join(names)}, left drained by an earlier run that"
                  " stopped before undraining them" + (f"; not healthy yet: {', '.join(sick)}" if sick else ""),
                  soft_wrap=True)
    return names


def engine_ready(stack: Stack, component: str, host: str, settings: dict[str, Any]) -> str | None:
    """None once every replica of `component` on `host` passes verify's readiness check, else why."""
    import testinfra

    from podium.secrets import StackSecrets
    from podium.verify import ssh_config

    node = stack.node(host)
    config = ssh_config(stack, StackSecrets(stack.name))
    target = testinfra.get_host(f"ssh://{host}", ssh_config=str(config), sudo=node.ssh.user != "root")
    checks = roles_module("engine_common.checks")
    why = None
    deadline = time.monotonic() + READY_S
    while time.monotonic() < deadline:
        try:
            for replica in settings["replicas"]:
                checks.ready(target, component.removeprefix("engine-"), replica)
            return None
        except Exception as exc:  # a failed check or a lost SSH connection: asked again until the bound
            why = (str(exc).splitlines() or [type(exc).__name__])[0]
            time.sleep(1)
    return why


def gateway_ready(stack: Stack, host: str) -> str | None:
    """None once the gateway on `host` answers /v2/health/live (as verify asks), else why."""
    from podium.gateway_access import gateway_url
    from podium.registry.ca import ca_certificate

    assert stack.gateway is not None
    url = gateway_url(stack, host) + "/v2/health/live"
    context = ssl.create_default_context(cafile=str(ca_certificate(stack.name))) if stack.gateway.tls else None
    why = "no answer"
    deadline = time.monotonic() + READY_S
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=5, context=context) as resp:
                if resp.status == 200:
                    return None
                why = f"HTTP {resp.status}"
        except OSError as exc:
            why = str(exc)
        time.sleep(0.5)
    return f"GET {url}: {why}"


class RollStopped(PodiumError):
    """A rolling change stopped at `host`: its role failed there or its replicas were not ready."""

    def __init__(self, host: str, message: str) -> None:
        super().__init__(message)
        self.host = host


def roll(
    stack: Stack,
    component: str,
    due: Sequence[Action],
    entries: dict[str, dict[str, Any]],
    record: Callable[[str], HostState | None],
    states: dict[str, HostState],
    console: Console,
) -> ComponentRun:
    """Change `component` host by host (see the module's docstring); raises at the first failure,
    naming the replica and how to roll back."""
    total = ComponentRun(component, "deploy", [a.host for a in due])
    order = {name: i for i, name in enumerate(stack.node_names)}
    together = [a.host for a in due if a.action not in ROLLED]
    if together:
        run = run_component([(h, entries[h]) for h in together], component, "deploy", record=record)
        _add(total, run)
        if run.failed:
            failed, reason = next(iter(run.failed.items()))
            raise RollStopped(failed, f"{component} failed on {failed}: {reason}")
    gateways = Gateways(stack, states, console) if component in ENGINES else None
    for action in sorted((a for a in due if a.action in ROLLED), key=lambda a: order[a.host]):
        host = action.host
        # One host may hold several replicas of an engine: its role may restart any of them, so
        # all of them are drained together.
        reps = host_replicas(stack, component, host) if gateways else []
        what = f"{', '.join(r.name for r in reps) or component} on {host}"
        with console.status(f"{component}: draining {what}"):
            drained = gateways.drain(reps) if gateways else "graceful stop"
        with console.status(f"{component}: {host} ({action.action}), one host at a time"):
            run = run_component([(host, entries[host])], component, "deploy", record=record)
        _add(total, run)
        why: str | None = run.failed.get(host)
        if why is None:
            with console.status(f"{component}: waiting for {what} to be ready"):
                why = (engine_ready(stack, component, host, dict(action.settings)) if gateways
                       else gateway_ready(stack, host))
        if why is None and gateways:
            sick = gateways.undrain(reps)
            if sick:
                why = f"ready on its node, but not healthy as the gateway sees it: {', '.join(sick)}"
        if why is not None:
            raise RollStopped(host, _stopped(stack, component, what, reps, why))
        console.print(f"[green]✓[/] {component} on {host}: {drained}, changed {run.changes}, ready",
                      soft_wrap=True)
    return total


def _add(total: ComponentRun, run: ComponentRun) -> None:
    total.changes += run.changes
    total.failed.update(run.failed)


def _stopped(stack: Stack, component: str, what: str, reps: Sequence[HostReplica], why: str) -> str:
    from podium.releases.book import ReleaseBook

    urls = f" ({', '.join(r.url for r in reps)}, left drained)" if reps else ""
    # The release the hosts served before this run, named: plain `podium rollback` goes back one
    # more, past the release this run never replaced.
    current = ReleaseBook(stack.name).current()
    back = f"podium rollback {stack.name}" + (f" --to {current.number}" if current else "")
    return (
        f"{component}: {what}{urls} did not pass readiness: {why.rstrip('. ')}. The rolling change"
        " stopped there; the hosts after it still serve the previous release. Roll back with"
        f" `{back}`, or fix the stack and run `podium up` again"
    )
