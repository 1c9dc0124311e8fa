"""A fine-tuning job on the cluster: the Job created through the API server, its pod's progress
lines followed, its adapter read back from the log, and the stack's Jobs listed, shown and deleted."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from kubernetes.client import ApiClient

from podium.cluster.api import APPLY, request, request_text
from podium.cluster.kinds import KINDS
from podium.cluster.meta import COMPONENT, FIELD_MANAGER, Manifest, managed_selector
from podium.cluster.trainer_job import ADAPTER, JOB_LABEL, SHOWN, job_name
from podium.errors import InvalidInput, PodiumError
from podium.finetune.adapter_log import read_adapter
from podium.finetune.job import check_job_id, events
from podium.stack import Stack

POLL_S = 1.0
JOBS, PODS = KINDS["Job"], KINDS["Pod"]


def create(api: ApiClient, namespace: str, job: Manifest) -> None:
    """Create the Job (server-side apply, as every object Podium makes)."""
    request(api, "PATCH", JOBS.path(namespace, job["metadata"]["name"]),
            query=[("fieldManager", FIELD_MANAGER), ("force", "true")], body=job, content_type=APPLY)


def follow(api: ApiClient, namespace: str, job: str, show: Callable[[dict[str, Any]], None],
           timeout_s: float, adapter_dir: Path) -> dict[str, Any]:
    """Show each progress line of the pod's `train` container until the Job ends; returns the
    `done` line with the adapter read back into `adapter_dir`, or PodiumError naming the failed
    container with its last log lines."""
    seen = 0
    done: dict[str, Any] = {}
    deadline = time.monotonic() + timeout_s
    while True:
        # The state is read before the log: a Job that ended has written its last line by then.
        state = _state(request(api, "GET", JOBS.path(namespace, job_name(job))))
        pod = _pod(api, namespace, job)
        complete = _log(api, namespace, pod, "train").split("\n")[:-1] if pod else []
        for event in events(complete[seen:]):
            show(event)
            done = event if event.get("event") == "done" else done
        seen = max(seen, len(complete))
        if state == "failed":
            raise PodiumError(f"fine-tune {job} failed on the cluster; {_failure(api, namespace, pod)}")
        if state == "done" and pod:
            read_adapter(_log(api, namespace, pod, ADAPTER).splitlines(), adapter_dir)
            return done
        if time.monotonic() > deadline:
            raise PodiumError(f"fine-tune {job} still runs after {timeout_s:.0f} s; follow it with "
                              "podium jobs logs, or stop it with podium jobs cancel.")
        time.sleep(POLL_S)


def _state(obj: dict[str, Any]) -> str:
    """running, done or failed, from the Job's conditions, as `kubectl get jobs` tells them."""
    for condition in obj.get("status", {}).get("conditions", []):
        if condition.get("status") == "True" and condition.get("type") in ("Complete", "Failed"):
            return "done" if condition["type"] == "Complete" else "failed"
    return "running"


def _pod(api: ApiClient, namespace: str, job: str) -> dict[str, Any] | None:
    found = request(api, "GET", PODS.collection(namespace),
                    query=[("labelSelector", f"{JOB_LABEL}={job}")]).get("items", [])
    return found[-1] if found else None


def _log(api: ApiClient, namespace: str, pod: dict[str, Any], container: str,
         lines: int | None = None) -> str:
    """A container's log; empty while the container has not started."""
    query = [("container", container)] + ([("tailLines", str(lines))] if lines else [])
    try:
        return request_text(api, f"{PODS.path(namespace, pod['metadata']['name'])}/log", query=query)
    except PodiumError:
        return ""


def _failure(api: ApiClient, namespace: str, pod: dict[str, Any] | None) -> str:
    """The container that failed first, its exit code and its last log lines."""
    if pod is None:
        return "its pod was never created (see kubectl describe job)"
    status = pod.get("status", {})
    for each in [*status.get("initContainerStatuses", []), *status.get("containerStatuses", [])]:
        ended = each.get("state", {}).get("terminated") or {}
        if ended and ended.get("exitCode", 0) != 0:
            tail = _log(api, namespace, pod, each["name"], 5).strip() or "(empty)"
            return f"container {each['name']} exited {ended.get('exitCode')}; its log: {tail}"
    tail = _log(api, namespace, pod, "train", 5).strip() or "(empty)"
    return f"its log: {tail}"


def list_jobs(api: ApiClient, stack: Stack) -> list[dict[str, Any]]:
    """Every fine-tuning Job of the stack: id, node, state and last loss, as the node path lists."""
    namespace = _namespace(stack)
    selector = f"{managed_selector(stack.name)},{COMPONENT}=trainer"
    out: list[dict[str, Any]] = []
    for item in request(api, "GET", JOBS.collection(namespace),
                        query=[("labelSelector", selector)]).get("items", []):
        job = item["metadata"]["labels"][JOB_LABEL]
        pod = _pod(api, namespace, job)
        steps = [e for e in events(_log(api, namespace, pod, "train", 20).splitlines())
                 if e.get("event") == "step"] if pod else []
        out.append({"job": job, "node": (pod or {}).get("spec", {}).get("nodeName") or "-",
                    "state": _state(item), "loss": steps[-1]["loss"] if steps else None})
    return out


def logs(api: ApiClient, stack: Stack, job: str, lines: int = 200) -> str:
    """The pulls' and the trainer's log lines of the job's pod (not the adapter it prints)."""
    namespace = _namespace(stack)
    pod = _pod(api, namespace, check_job_id(job))
    if pod is None:
        raise InvalidInput(f"job {job} has no pod on the cluster; see podium jobs ls.")
    return "".join(_log(api, namespace, pod, name, lines) for name in SHOWN)


def cancel(api: ApiClient, stack: Stack, job: str) -> bool:
    """Delete the Job and, in the background, its pod; False when there was no such Job."""
    check_job_id(job)
    namespace = _namespace(stack)
    found = request(api, "GET", JOBS.collection(namespace),
                    query=[("labelSelector", f"{JOB_LABEL}={job}")]).get("items", [])
    if not found:
        return False
    request(api, "DELETE", JOBS.path(namespace, job_name(job)),
            body={"propagationPolicy": "Background"})
    return True


def _namespace(stack: Stack) -> str:
    assert stack.kubernetes is not None
    return stack.kubernetes.namespace
