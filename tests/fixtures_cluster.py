"""Stacks with a Kubernetes section for the cluster and Pulumi tests, loaded through the real
loader (so the stack rules run), plus the example stacks of stacks/ that declare a cluster."""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from kubernetes.client import ApiClient, Configuration

from podium.stack.loader import load_stack
from podium.stack.model import Stack
from podium.stack.versions import VersionTable, load_versions

REPO = Path(__file__).resolve().parents[1]

# Every engine kind on the cluster, a GPU node, two gateway nodes on PostgreSQL, a registry with
# TLS, monitoring, libvirt machines: the widest shape the cluster layer has to build.
CLUSTER_STACK = """
name: clustered
artifact_mirror: http://10.70.0.1:8081/podium
host_network: {subnet: 10.70.0.0/24, gateway: 10.70.0.1}
nodes:
  - name: ctl
    address: 10.70.0.10
    machine: {driver: libvirt, hypervisor: "qemu:///system", cpus: 2, memory: 4GiB,
              disks: [{name: data, size: 20GiB}]}
  - name: gpu1
    address: 10.70.0.11
    gpus: 4
    labels: {podium.io/pool: gpu}
    machine: {driver: libvirt, hypervisor: "qemu:///system", cpus: 8, memory: 32GiB,
              pci_passthrough: ["0000:3b:00.0"]}
  - name: cpu1
    address: 10.70.0.12
storage: {driver: nfs, nodes: [ctl]}
registry: {node: ctl, port: 5000, tls: true}
models:
  - {name: tiny-llama, version: "1", format: gguf, source: "tiny:gguf"}
  - {name: tiny-hf, version: "1", format: safetensors, source: "tiny:hf", aliases: [stable]}
  - {name: iris, version: "1", format: skops, source: "tiny:sklearn"}
engines:
  - {name: chat-cpu, kind: llamacpp, model: "tiny-llama:1", nodes: [cpu1, ctl], replicas: 3,
     port: 8080, args: {ctx-size: 2048, no-webui: true, flash-attn: false}}
  - {name: chat-gpu, kind: vllm, model: "tiny-hf:stable", nodes: [gpu1], port: 8100,
     gpus_per_replica: 2}
  - {name: chat-sg, kind: sglang, model: "tiny-hf:1", nodes: [gpu1], port: 8200}
  - {name: iris, kind: predictive, model: "iris:1", nodes: [cpu1], replicas: 2, port: 8300}
monitoring: {node: ctl}
gateway: {nodes: [ctl, cpu1], port: 8443, store: postgresql, store_node: ctl,
          prices: {tiny-llama: {prompt: 0.1, completion: 0.2}}}
kubernetes:
  distribution: k3s
  server: ctl
  agents: [gpu1, cpu1]
  namespace: podium-ai
  engines: [chat-cpu, chat-gpu, chat-sg, iris]
  gateway: true
"""

# One node, sqlite gateway on the cluster, registry without TLS, no mirror: the small shape.
SMALL_STACK = """
name: small
nodes:
  - {name: solo, address: 10.71.0.10}
network: {admin_sources: [10.71.0.0/24]}
registry: {node: solo, tls: false}
models:
  - {name: tiny-llama, version: "1", format: gguf, source: "tiny:gguf"}
engines:
  - {name: chat, kind: llamacpp, model: "tiny-llama:1", nodes: [solo]}
gateway: {nodes: [solo], port: 8443, tls: false}
kubernetes: {server: solo, engines: [chat], gateway: true}
"""


def write_stack(folder: Path, text: str) -> Stack:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "stack.yaml").write_text(text, encoding="utf-8")
    return load_stack(folder)


def example_stacks() -> list[Path]:
    """stacks/<name>/ folders of the repository that hold a stack.yaml."""
    return sorted(p.parent for p in (REPO / "stacks").glob("*/stack.yaml"))


@pytest.fixture
def versions() -> VersionTable:
    return load_versions()


@pytest.fixture
def cluster_stack(tmp_path: Path) -> Stack:
    return write_stack(tmp_path / "clustered", CLUSTER_STACK)


@pytest.fixture
def small_stack(tmp_path: Path) -> Stack:
    return write_stack(tmp_path / "small", SMALL_STACK)


# -- a fake Kubernetes API server on 127.0.0.1 -------------------------------------------------
# It implements only what podium.cluster.apply and podium.finetune.cluster_run use: server-side
# apply PATCH, GET of one object, GET of a collection with an equality label selector, DELETE and
# a pod's log. Deployments report a finished rollout after `ready_after` reads, or a progress
# deadline when their name is in `stuck`. Jobs run nothing: `on_job` (set by a test) is called
# when one is created, and a Job reports active until `ready_after` reads, then the condition
# `job_outcomes` names for it. The log of a container named in `log_lines_per_read` grows by
# that many lines per read, as a running container's does, until its Job (the pod's name starts
# with the Job's) has reported its end.


class FakeCluster:
    def __init__(self) -> None:
        self.objects: dict[str, dict[str, Any]] = {}  # API path → object
        self.requests: list[tuple[str, str, dict[str, list[str]], str]] = []
        self.ready_after = 2
        self.stuck: set[str] = set()
        self.reads: dict[str, int] = {}
        self.lock = threading.Lock()
        self.on_job: Callable[[FakeCluster, dict[str, Any]], None] | None = None
        self.job_outcomes: dict[str, str] = {}  # Job name → Complete or Failed
        self.logs: dict[tuple[str, str], str] = {}  # (pod, container) → its log
        self.log_lines_per_read: dict[str, int] = {}  # container → lines added per read
        self.log_reads: dict[tuple[str, str], int] = {}
        self.delete_bodies: dict[str, Any] = {}
        self.ended: set[str] = set()  # Jobs that have reported their outcome

    def job_status(self, path: str, obj: dict[str, Any]) -> None:
        self.reads[path] = self.reads.get(path, 0) + 1
        outcome = self.job_outcomes.get(obj["metadata"]["name"])
        if outcome and self.reads[path] > self.ready_after:
            obj["status"] = {"conditions": [{"type": outcome, "status": "True"}],
                             "succeeded" if outcome == "Complete" else "failed": 1}
            self.ended.add(obj["metadata"]["name"])
        else:
            obj["status"] = {"active": 1}

    def log(self, pod: str, container: str, tail: int | None) -> str | None:
        text = self.logs.get((pod, container))
        if text is None:
            return None
        lines = text.splitlines(keepends=True)
        running = not any(pod.startswith(f"{job}-") for job in self.ended)
        if container in self.log_lines_per_read and running:
            reads = self.log_reads[(pod, container)] = self.log_reads.get((pod, container), 0) + 1
            lines = lines[:reads * self.log_lines_per_read[container]]
        return "".join(lines[-tail:] if tail else lines)

    def deployment_status(self, path: str, obj: dict[str, Any]) -> None:
        name = obj["metadata"]["name"]
        self.reads[path] = self.reads.get(path, 0) + 1
        want = obj["spec"].get("replicas", 1)
        if name in self.stuck:
            obj["status"] = {"observedGeneration": obj["metadata"]["generation"], "conditions": [
                {"type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded",
                 "message": f'ReplicaSet "{name}-5d8f" has timed out progressing.'}]}
        elif self.reads[path] > self.ready_after:
            obj["status"] = {"observedGeneration": obj["metadata"]["generation"], "replicas": want,
                             "updatedReplicas": want, "readyReplicas": want,
                             "availableReplicas": want}
        else:
            obj["status"] = {"observedGeneration": obj["metadata"]["generation"] - 1}


_OBJECT = re.compile(
    r"^/(?:api/v1|apis/[^/]+/[^/]+)(?:/namespaces/(?P<ns>[^/]+))?"
    r"/(?P<plural>[a-z]+)(?:/(?P<name>[^/]+))?$"
)


def _handler(cluster: FakeCluster) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

        def _send(self, code: int, body: dict[str, Any]) -> None:
            data = json.dumps(body).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _status(self, code: int, message: str) -> None:
            self._send(code, {"kind": "Status", "apiVersion": "v1", "status": "Failure",
                              "message": message, "code": code})

        def _route(self, method: str) -> tuple[str, dict[str, list[str]], Any]:
            url = urlsplit(self.path)
            query = parse_qs(url.query)
            length = int(self.headers.get("Content-Length") or 0)
            body = json.loads(self.rfile.read(length)) if length else None
            with cluster.lock:
                cluster.requests.append((method, url.path, query,
                                         self.headers.get("Content-Type", "")))
            return url.path, query, body

        def do_PATCH(self) -> None:  # noqa: N802 (http.server's naming)
            path, query, body = self._route("PATCH")
            if self.headers.get("Content-Type") != "application/apply-patch+yaml":
                return self._status(415, "only server-side apply is served here")
            if query.get("fieldManager") != ["podium"]:
                return self._status(422, "fieldManager is required for apply patch")
            match = _OBJECT.match(path)
            name = body["metadata"]["name"]
            if path.startswith("/api/v1/namespaces/") and path.count("/") == 4:
                if path.rsplit("/", 1)[1] != name:
                    return self._status(400, "the name of the object does not match the URL")
            elif match is None or match["name"] != name or match["ns"] != body["metadata"].get(
                "namespace"
            ):
                return self._status(400, "the name or namespace of the object does not match")
            with cluster.lock:
                old = cluster.objects.get(path)
                obj = json.loads(json.dumps(body))
                generation = 1
                if old:
                    changed = old.get("spec") != obj.get("spec")
                    generation = old["metadata"]["generation"] + changed
                obj["metadata"]["generation"] = generation
                obj["metadata"]["managedFields"] = [{"manager": query["fieldManager"][0],
                                                     "operation": "Apply"}]
                cluster.objects[path] = obj
                if obj["kind"] in ("Deployment", "Job"):
                    cluster.reads[path] = 0
                if obj["kind"] == "Job" and cluster.on_job and not old:
                    cluster.on_job(cluster, obj)
            self._send(200 if old else 201, obj)

        def _pod_log(self, path: str, query: dict[str, list[str]]) -> None:
            pod = path.split("/")[-2]
            container = query.get("container", [""])[0]
            tail = int(query["tailLines"][0]) if "tailLines" in query else None
            with cluster.lock:
                text = cluster.log(pod, container, tail)
            if text is None:
                return self._status(400, f'container "{container}" in pod "{pod}" is waiting '
                                         "to start: PodInitializing")
            data = text.encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:  # noqa: N802
            path, query, _ = self._route("GET")
            if path.endswith("/log") and "/pods/" in path:
                return self._pod_log(path, query)
            with cluster.lock:
                if path in cluster.objects:
                    obj = cluster.objects[path]
                    if obj["kind"] == "Deployment":
                        cluster.deployment_status(path, obj)
                    if obj["kind"] == "Job":
                        cluster.job_status(path, obj)
                    return self._send(200, obj)
                wanted = dict(
                    part.split("=", 1) for part in query.get("labelSelector", [""])[0].split(",")
                    if part
                )
                items = [
                    o for p, o in cluster.objects.items()
                    if p.rsplit("/", 1)[0] == path
                    and all(o["metadata"].get("labels", {}).get(k) == v for k, v in wanted.items())
                ]
                for p, o in cluster.objects.items():
                    if o in items and o["kind"] == "Job":
                        cluster.job_status(p, o)
            match = _OBJECT.match(path)
            if match and match["name"] is None:
                return self._send(200, {"kind": "List", "items": items})
            return self._status(404, f"{path} not found")

        def do_DELETE(self) -> None:  # noqa: N802
            path, _, body = self._route("DELETE")
            with cluster.lock:
                gone = cluster.objects.pop(path, None)
                cluster.delete_bodies[path] = body
            if gone is None:
                return self._status(404, f"{path} not found")
            return self._send(200, {"kind": "Status", "status": "Success"})

    return Handler


@pytest.fixture
def fake_api() -> Iterator[tuple[FakeCluster, ApiClient]]:
    """A fake API server on 127.0.0.1 and a real `kubernetes` ApiClient pointed at it."""
    cluster = FakeCluster()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(cluster))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    config = Configuration(host=f"http://127.0.0.1:{server.server_address[1]}")
    client = ApiClient(config)
    try:
        yield cluster, client
    finally:
        client.close()
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
