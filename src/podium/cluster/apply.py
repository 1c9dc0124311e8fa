"""Apply objects with server-side apply (field manager "podium"), prune what Podium created for
the stack that it no longer declares, and wait for rollouts while showing progress."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from kubernetes.client import ApiClient
from rich.console import Console
from rich.progress import Progress, SpinnerColumn, TextColumn

from podium.cluster.api import APPLY, request
from podium.cluster.kinds import KINDS, PRUNE_ORDER, kind_of
from podium.cluster.meta import FIELD_MANAGER, STACK, Manifest, managed_selector
from podium.errors import PodiumError


@dataclass
class ApplyResult:
    applied: list[str] = field(default_factory=list)
    pruned: list[str] = field(default_factory=list)
    # Volume claims of the stack no longer declared: kept, since deleting them loses data.
    kept_claims: list[str] = field(default_factory=list)
    rolled_out: list[str] = field(default_factory=list)


def _id(obj: Manifest) -> str:
    return f"{obj['kind']}/{obj['metadata']['name']}"


def apply(
    objects: Sequence[Manifest],
    api_client: ApiClient,
    namespace: str,
    prune: bool = True,
    wait: bool = True,
    *,
    stack_name: str | None = None,
    timeout_s: float = 900.0,
    poll_s: float = 2.0,
    console: Console | None = None,
) -> ApplyResult:
    """Apply `objects` in order; prune this stack's objects (by label) that are not among them;
    wait until every Deployment has rolled out. `stack_name` is needed to prune when `objects` is
    empty (the stack dropped its cluster); otherwise it is read from the objects' labels."""
    result = ApplyResult()
    names = {o["metadata"].get("labels", {}).get(STACK) for o in objects}
    if stack_name is None:
        if len(names) != 1 or None in names:
            raise PodiumError(
                "objects must all carry one podium.io/stack label, or pass stack_name"
            )
        stack_name = str(names.pop())
    for obj in objects:
        kind = kind_of(obj)
        body = dict(obj)
        if kind.namespaced:
            body["metadata"] = {**obj["metadata"], "namespace": namespace}
        request(api_client, "PATCH", kind.path(namespace, obj["metadata"]["name"]),
                 query=[("fieldManager", FIELD_MANAGER), ("force", "true")], body=body,
                 content_type=APPLY)
        result.applied.append(_id(obj))
    if prune:
        _prune(objects, api_client, namespace, stack_name, result)
    if wait:
        deployments = [o["metadata"]["name"] for o in objects if o["kind"] == "Deployment"]
        result.rolled_out = wait_for_rollouts(api_client, namespace, deployments,
                                              timeout_s=timeout_s, poll_s=poll_s, console=console)
    return result


def _prune(objects: Sequence[Manifest], api: ApiClient, namespace: str, stack_name: str,
           result: ApplyResult) -> None:
    wanted = {_id(o) for o in objects}
    selector = managed_selector(stack_name)
    for name in (*PRUNE_ORDER, "PersistentVolumeClaim"):
        kind = KINDS[name]
        query = [("labelSelector", selector)]
        listing = request(api, "GET", kind.collection(namespace), query=query)
        for item in listing.get("items", []):
            ident = f"{name}/{item['metadata']['name']}"
            if ident in wanted:
                continue
            if name == "PersistentVolumeClaim":
                result.kept_claims.append(ident)
                continue
            request(api, "DELETE", kind.path(namespace, item["metadata"]["name"]),
                     body={"propagationPolicy": "Background"})
            result.pruned.append(ident)


def rollout_state(deployment: dict[str, Any]) -> tuple[bool, str]:
    """(done, what it waits for), as `kubectl rollout status` decides it."""
    spec, status = deployment.get("spec", {}), deployment.get("status", {})
    generation = deployment.get("metadata", {}).get("generation", 0)
    want = spec.get("replicas", 1)
    for condition in status.get("conditions", []):
        stuck = condition.get("reason") == "ProgressDeadlineExceeded"
        if condition.get("type") == "Progressing" and stuck:
            raise PodiumError(
                f"Deployment/{deployment['metadata']['name']} did not roll out: "
                f"{condition.get('message', 'progress deadline exceeded')}"
            )
    if status.get("observedGeneration", 0) < generation:
        return False, "waiting for the controller to see the change"
    updated = status.get("updatedReplicas", 0)
    if updated < want:
        return False, f"{updated}/{want} replicas updated"
    if status.get("replicas", 0) > updated:
        return False, f"{status.get('replicas', 0) - updated} old replicas terminating"
    available = status.get("availableReplicas", 0)
    if available < want:
        return False, f"{available}/{want} replicas available"
    return True, "rolled out"


def wait_for_rollouts(api: ApiClient, namespace: str, names: Sequence[str], *,
                      timeout_s: float = 900.0, poll_s: float = 2.0,
                      console: Console | None = None,
                      clock: Callable[[], float] = time.monotonic) -> list[str]:
    """Poll each Deployment until it has rolled out; on timeout, name each one still waiting."""
    pending = dict.fromkeys(names, "not seen yet")
    done: list[str] = []
    deadline = clock() + timeout_s
    path = KINDS["Deployment"].path
    with Progress(SpinnerColumn(), TextColumn("{task.description}"),
                  console=console or Console(stderr=True), transient=True) as bar:
        task = bar.add_task("rollouts", total=len(names))
        while pending:
            for name in list(pending):
                finished, why = rollout_state(request(api, "GET", path(namespace, name)))
                if finished:
                    del pending[name]
                    done.append(name)
                    bar.advance(task)
                else:
                    pending[name] = why
            bar.update(task, description=f"rolled out {len(done)}/{len(names)}"
                       + (f"; waiting on {', '.join(sorted(pending))}" if pending else ""))
            if not pending:
                break
            if clock() >= deadline:
                waiting = "; ".join(f"Deployment/{n}: {why}" for n, why in sorted(pending.items()))
                raise PodiumError(f"rollouts not finished after {timeout_s:.0f}s: {waiting}")
            time.sleep(poll_s)
    return done
