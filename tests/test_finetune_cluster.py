"""`podium finetune` and `podium jobs` on a stack that trains on its cluster, against a FAKE API
server on 127.0.0.1 (no real cluster runs here). The fake runs no pod: it serves, as the pod's
log, what the real train.py printed when trained here and what the real adapter_log printed of
that adapter, so the CLI follows, reads back, converts and pushes a real adapter."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import typer
import yaml
from kubernetes.client import ApiClient

from podium.cli import finetune as finetune_cli
from podium.errors import PodiumError
from podium.finetune import cluster_run
from podium.finetune.adapter_log import adapter_lines, read_adapter
from podium.finetune.toolchain import trainer_build, trainer_venv
from podium.models import make_tiny
from podium.registry import ModelRef, Registry
from podium.registry.ref import DatasetRef
from tests.fixtures_cluster import FakeCluster, fake_api
from tests.fixtures_gateway import CliRun, invoke
from tests.fixtures_registry import RunningRegistry, registry
from tests.test_finetune_train import chat_dataset
from tests.test_registry_cli import at, push

__all__ = ["fake_api", "registry"]

NS = "podium-train"


def podium(*args: str) -> CliRun:
    app = typer.Typer()
    finetune_cli.register(app)
    return invoke(app, *args)


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A real run of train.py on the tiny llama (what the Job's train container prints), and
    the real adapter_log of its adapter (what the Job's last container prints)."""
    root = tmp_path_factory.mktemp("trained")
    base = make_tiny("hf", root / "tiny-hf")
    data = chat_dataset(root / "chat.jsonl", lines=16)
    script = Path(__file__).resolve().parents[1] / "src/podium/finetune/train.py"
    done = subprocess.run([str(trainer_venv() / "bin" / "python"), str(script), "--base", str(base),
                           "--data", str(data), "--out", str(root / "adapter"), "--epochs", "2",
                           "--lr", "0.002", "--rank", "4", "--seed", "3"],
                          capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    printed = subprocess.run([sys.executable, "-m", "podium.finetune.adapter_log",
                              str(root / "adapter")], capture_output=True, text=True, timeout=120,
                             check=True)
    return {"base": base, "data": data, "progress": done.stdout, "adapter_log": printed.stdout,
            "adapter": root / "adapter"}


def cluster_stack(tmp_path: Path, client: ApiClient) -> Path:
    """A stack training on its cluster, whose kubeconfig points at the fake API server."""
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "fake",
        "clusters": [{"name": "fake", "cluster": {"server": client.configuration.host}}],
        "users": [{"name": "podium", "user": {"token": "fake-cluster-token"}}],
        "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "podium"}}]}))
    kubeconfig.chmod(0o600)
    folder = tmp_path / "stack"
    folder.mkdir()
    (folder / "stack.yaml").write_text(f"""
name: trains
nodes:
  - {{name: ctl, address: 10.73.0.10}}
  - {{name: node1, address: 10.73.0.11, labels: {{trainer: "true"}}}}
network: {{admin_sources: [10.73.0.0/24]}}
registry: {{node: ctl, tls: false}}
kubernetes: {{server: ctl, agents: [node1], namespace: {NS}, trainer: true,
              kubeconfig: {kubeconfig}}}
""")
    return folder


def runs_job(cluster: FakeCluster, outcome: str, logs: dict[str, str],
             status: dict[str, Any] | None = None) -> None:
    """When a Job is created, give it a pod on node1 with these container logs, then `outcome`."""
    def on_job(cluster: FakeCluster, job: dict[str, Any]) -> None:
        name = job["metadata"]["name"]
        pod = f"{name}-x7k2p"
        cluster.objects[f"/api/v1/namespaces/{NS}/pods/{pod}"] = {
            "kind": "Pod", "metadata": {"name": pod, "labels": job["spec"]["template"]["metadata"]["labels"]},
            "spec": {"nodeName": "node1"}, "status": status or {}}
        cluster.logs.update({(pod, container): text for container, text in logs.items()})
        cluster.job_outcomes[name] = outcome

    cluster.on_job = on_job


def the_job(cluster: FakeCluster) -> dict[str, Any]:
    (job,) = [o for o in cluster.objects.values() if o["kind"] == "Job"]
    return job


def test_finetune_creates_the_job_follows_its_log_and_pushes_the_adapter_on_a_fake_api_server(
        fake_api: tuple[FakeCluster, ApiClient], registry: RunningRegistry, trained: dict[str, Any],
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cluster, client = fake_api
    monkeypatch.setattr(cluster_run, "POLL_S", 0.01)
    cluster.log_lines_per_read = {"train": 1}  # the trainer's log grows a line per read
    runs_job(cluster, "Complete", {"dataset-pull": "pulled support\n", "base-pull": "pulled tiny-hf\n",
                                   "train": trained["progress"], "adapter": trained["adapter_log"]})
    base_digest = push(registry, trained["base"], "tiny-hf", "1")
    run = podium("finetune", str(cluster_stack(tmp_path, client)), "--base", "tiny-hf:1", "--data",
                 str(trained["data"]), "--name", "support", "--epochs", "2", "--lr", "0.002",
                 "--rank", "4", "--seed", "3", *at(registry))
    assert run.exit_code == 0, run.error
    job = the_job(cluster)
    reg = Registry.from_env(registry.address, insecure=True)
    tag = hashlib.sha256(trained["data"].read_bytes()).hexdigest()[:12]
    dataset_digest = reg.resolve(DatasetRef("support", tag=tag))
    assert job["metadata"]["annotations"]["podium.io/dataset"] == f"support@{dataset_digest}"
    assert job["metadata"]["annotations"]["podium.io/base"] == f"tiny-hf@{base_digest}"
    pulls = job["spec"]["template"]["spec"]["initContainers"]
    assert pulls[0]["command"][3:5] == [f"support@{dataset_digest}", "--dataset"]
    assert pulls[1]["command"][3] == f"tiny-hf@{base_digest}"
    # Every step the trainer printed, once each and in order, as the node path shows them.
    steps = [json.loads(line) for line in trained["progress"].splitlines() if '"step"' in line]
    shown = [line for line in run.error.splitlines() if line.startswith("epoch ")]
    assert shown == [f"epoch {s['epoch']} step {s['step']} loss {s['loss']:.4f}" for s in steps]
    assert "on the cluster" in run.error
    name_tag, digest = run.stdout.split()
    assert name_tag == "support:1"
    assert reg.show(ModelRef.parse("support:1")).digest == digest
    lineage = reg.config(ModelRef.parse("support:1"))["lineage"]
    assert lineage == {"kind": "lora-adapter", "base": {"model": "tiny-hf:1", "digest": base_digest},
                       "dataset": {"name": "datasets/support", "digest": dataset_digest},
                       "hyperparameters": {"epochs": 2, "lr": 0.002, "rank": 4, "seed": 3},
                       "trainer": trainer_build()}
    assert lineage["hyperparameters"] == json.loads(
        job["metadata"]["annotations"]["podium.io/hyperparameters"])


def test_a_failed_job_is_reported_with_its_containers_last_lines_on_a_fake_api_server(
        fake_api: tuple[FakeCluster, ApiClient], registry: RunningRegistry, trained: dict[str, Any],
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cluster, client = fake_api
    monkeypatch.setattr(cluster_run, "POLL_S", 0.01)
    failed = {"initContainerStatuses": [
        {"name": "dataset-pull", "state": {"terminated": {"exitCode": 0}}},
        {"name": "base-pull", "state": {"terminated": {"exitCode": 0}}},
        {"name": "train", "state": {"terminated": {"exitCode": 1, "reason": "Error"}}}]}
    crash = "Traceback (most recent call last):\nRuntimeError: not enough memory: tried to allocate\n"
    started = trained["progress"].splitlines(keepends=True)[0]
    runs_job(cluster, "Failed", {"train": started + crash}, failed)
    push(registry, trained["base"], "tiny-hf", "1")
    run = podium("finetune", str(cluster_stack(tmp_path, client)), "--base", "tiny-hf:1", "--data",
                 str(trained["data"]), "--name", "failing", *at(registry))
    assert run.exit_code == 1
    job = the_job(cluster)["metadata"]["labels"]["podium.io/job"]
    assert run.error.startswith(f"fine-tune {job} failed on the cluster; container train exited 1; "
                                "its log: ")
    assert run.error.endswith("RuntimeError: not enough memory: tried to allocate")
    assert Registry.from_env(registry.address, insecure=True).tags("failing") == []


def test_jobs_ls_logs_and_cancel_on_a_fake_api_server(
        fake_api: tuple[FakeCluster, ApiClient], trained: dict[str, Any], tmp_path: Path) -> None:
    from podium.cluster.trainer_job import TrainingRun, trainer_job
    from podium.stack import load_stack
    from podium.stack.versions import load_versions

    cluster, client = fake_api
    stack_dir = cluster_stack(tmp_path, client)
    stack = load_stack(stack_dir)
    ids = ["support-20261130T100000-aaaaaa", "support-20261130T110000-bbbbbb"]
    for job, outcome in zip(ids, ["Complete", ""], strict=True):
        runs_job(cluster, outcome, {"train": trained["progress"], "adapter": trained["adapter_log"]})
        run = TrainingRun(job=job, base="tiny-hf", base_digest="sha256:" + "b" * 64,
                          dataset="support", dataset_digest="sha256:" + "d" * 64,
                          data_file="chat.jsonl", hyperparameters={}, trainer=trainer_build())
        cluster_run.create(client, NS, trainer_job(stack, load_versions(), run))
    cluster.ready_after = 0
    listed = podium("jobs", "ls", str(stack_dir), "--json")
    assert listed.exit_code == 0, listed.error
    last = [json.loads(line)["loss"] for line in trained["progress"].splitlines() if '"step"' in line][-1]
    assert json.loads(listed.stdout) == [
        {"job": ids[0], "node": "node1", "state": "done", "loss": last},
        {"job": ids[1], "node": "node1", "state": "running", "loss": last}]
    logs = podium("jobs", "logs", str(stack_dir), ids[0])
    assert logs.exit_code == 0, logs.error
    assert logs.stdout == trained["progress"], "the trainer's lines, without the adapter's"
    cancel = podium("jobs", "cancel", str(stack_dir), ids[1])
    assert (cancel.exit_code, cancel.stdout.strip()) == (0, f"deleted Job {ids[1]} and its pod")
    path = f"/apis/batch/v1/namespaces/{NS}/jobs/{ids[1].lower()}"
    assert path not in cluster.objects
    assert cluster.delete_bodies[path] == {"propagationPolicy": "Background"}
    again = podium("jobs", "cancel", str(stack_dir), ids[1])
    assert (again.exit_code, again.error) == (
        2, f"job {ids[1]} is not a Job of trains's cluster; see podium jobs ls.")


def test_a_cut_adapter_log_is_refused_and_a_whole_one_gives_the_adapter_back(
        trained: dict[str, Any], tmp_path: Path) -> None:
    lines = trained["adapter_log"].splitlines()
    assert lines == list(adapter_lines(trained["adapter"]))
    back = read_adapter(lines, tmp_path / "whole")
    assert {p.name: p.read_bytes() for p in back.iterdir()} == {
        p.name: p.read_bytes() for p in trained["adapter"].iterdir() if p.is_file()}
    with pytest.raises(PodiumError, match="the kubelet cut the log"):
        read_adapter(lines[1:], tmp_path / "cut")
    assert not (tmp_path / "cut").exists()


def test_the_jobs_pull_commands_fetch_the_dataset_and_the_base_by_digest(
        registry: RunningRegistry, trained: dict[str, Any], tmp_path: Path) -> None:
    """The init containers' own commands, run here against a real registry."""
    from podium.cli.model import app as model_app
    from podium.cluster.trainer_job import TrainingRun, trainer_job
    from podium.finetune.dataset import load_dataset
    from podium.finetune.publish import push_dataset
    from podium.stack import load_stack
    from podium.stack.versions import load_versions

    reg = Registry.from_env(registry.address, insecure=True)
    base_digest = push(registry, trained["base"], "pulled-base", "1")
    dataset_digest = push_dataset(reg, load_dataset(trained["data"]), "pulled")
    run = TrainingRun(job="pulled-20261130T100000-cccccc", base="pulled-base",
                      base_digest=base_digest, dataset="pulled", dataset_digest=dataset_digest,
                      data_file="chat.jsonl", hyperparameters={}, trainer=trainer_build())
    stack = load_stack(cluster_stack(tmp_path, ApiClient()))
    pulls = trainer_job(stack, load_versions(), run)["spec"]["template"]["spec"]["initContainers"][:2]
    for container in pulls:
        command = list(container["command"])
        assert command[:3] == ["podium", "model", "pull"] and command[-1] == "--insecure"
        command[command.index("--to") + 1] = str(tmp_path / container["name"])
        command[command.index("--registry") + 1] = registry.address
        done = invoke(model_app, *command[2:])
        assert done.exit_code == 0, done.error
    assert (tmp_path / "dataset-pull" / "chat.jsonl").read_bytes() == trained["data"].read_bytes()
    assert {p.name for p in (tmp_path / "base-pull").iterdir()} == {
        p.name for p in trained["base"].iterdir()}
