"""The fine-tuning Job a cluster stack runs: its images, node selector, pulls by digest, trainer
flags, lineage and credentials, and the stack rule that decides a stack trains on its cluster."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from podium.cluster import ClusterInputs, validate_objects
from podium.cluster.inputs import REGISTRY_AUTH
from podium.cluster.meta import image, podium_image
from podium.cluster.trainer_job import TrainingRun, trainer_job
from podium.errors import PodiumError
from podium.finetune.job import Hyperparameters
from podium.finetune.toolchain import trainer_build
from podium.plan.actions import make_plan
from podium.stack.model import Stack
from podium.stack.versions import VersionTable
from tests.fixtures_cluster import versions, write_stack

__all__ = ["versions"]

# node1 trains; the registry has TLS, so the pulls trust Podium's CA.
TRAINING_STACK = """
name: training
nodes:
  - {name: ctl, address: 10.72.0.10}
  - {name: node1, address: 10.72.0.11, labels: {trainer: "true"}}
network: {admin_sources: [10.72.0.0/24]}
registry: {node: ctl, port: 5000, tls: true}
models:
  - {name: tiny-llama, version: "1", format: gguf, source: "tiny:gguf"}
engines:
  - {name: chat, kind: llamacpp, model: "tiny-llama:1", nodes: [ctl]}
kubernetes: {server: ctl, agents: [node1], trainer: true}
"""
BASE_DIGEST = "sha256:" + "b" * 64
DATASET_DIGEST = "sha256:" + "d" * 64
JOB = "support-20261130T120000-a1b2c3"


def training_run(node: str | None = None) -> TrainingRun:
    hyper = Hyperparameters(epochs=4, lr=0.002, rank=16, seed=7)
    return TrainingRun(job=JOB, base="tiny-hf", base_digest=BASE_DIGEST, dataset="support",
                       dataset_digest=DATASET_DIGEST, data_file="chat.jsonl",
                       hyperparameters=hyper.to_dict(), args=hyper.args(), trainer=trainer_build(),
                       node=node)


@pytest.fixture
def training_stack(tmp_path: Path) -> Stack:
    return write_stack(tmp_path / "training", TRAINING_STACK)


def test_the_job_pulls_by_digest_trains_with_the_flags_and_prints_the_adapter(
        training_stack: Stack, versions: VersionTable) -> None:
    job = trainer_job(training_stack, versions, training_run(), ClusterInputs(ca_pem="PEM"))
    assert (job["apiVersion"], job["kind"]) == ("batch/v1", "Job")
    assert job["metadata"]["name"] == JOB.lower() and job["metadata"]["namespace"] == "podium"
    assert job["metadata"]["labels"]["podium.io/job"] == JOB
    assert job["metadata"]["labels"]["podium.io/component"] == "trainer"
    assert job["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "podium"
    spec = job["spec"]
    assert spec["backoffLimit"] == 0, "a failed run is reported, never retried from nothing"
    assert spec["ttlSecondsAfterFinished"] > 0
    pod = spec["template"]["spec"]
    assert pod["restartPolicy"] == "Never"
    assert pod["nodeSelector"] == {"trainer": "true"}
    assert spec["template"]["metadata"]["labels"]["podium.io/job"] == JOB
    dataset, base, train = pod["initContainers"]
    address = "10.72.0.10:5000"
    assert dataset["command"] == ["podium", "model", "pull", f"support@{DATASET_DIGEST}", "--dataset",
                                  "--to", "/work/data", "--registry", address,
                                  "--ca", "/etc/podium/ca/ca.pem"]
    assert base["command"] == ["podium", "model", "pull", f"tiny-hf@{BASE_DIGEST}", "--to",
                               "/work/base", "--registry", address, "--ca", "/etc/podium/ca/ca.pem"]
    assert dataset["image"] == base["image"] == podium_image(training_stack, versions)
    trainer_version = versions.components["trainer"].version
    assert train["image"] == image(training_stack, versions, "trainer") == (
        f"podium/trainer:{trainer_version}")
    assert train["command"] == [
        "/opt/podium/trainer/venv/bin/python", "/opt/podium/trainer/train.py",
        "--base", "/work/base", "--data", "/work/data/chat.jsonl", "--out", "/work/adapter",
        "--epochs", "4", "--lr", "0.002", "--rank", "16", "--seed", "7"]
    assert train["resources"]["requests"]["memory"] and train["resources"]["limits"]["memory"]
    (adapter,) = pod["containers"]
    assert adapter["command"] == ["python3", "-m", "podium.finetune.adapter_log", "/work/adapter"]
    assert {"name": "podium-ca", "configMap": {"name": "podium-ca"}} in pod["volumes"]
    assert {"name": "work", "emptyDir": {}} in pod["volumes"]


def test_the_job_records_the_lineage_the_adapter_gets(training_stack: Stack,
                                                      versions: VersionTable) -> None:
    job = trainer_job(training_stack, versions, training_run())
    annotations = job["metadata"]["annotations"]
    assert annotations == job["spec"]["template"]["metadata"]["annotations"]
    assert annotations["podium.io/base"] == f"tiny-hf@{BASE_DIGEST}"
    assert annotations["podium.io/dataset"] == f"support@{DATASET_DIGEST}"
    assert json.loads(annotations["podium.io/hyperparameters"]) == {
        "epochs": 4, "lr": 0.002, "rank": 16, "seed": 7}
    assert annotations["podium.io/trainer"] == trainer_build()


def test_the_job_holds_no_secret_in_clear_and_pulls_with_the_engines_registry_secret(
        training_stack: Stack, versions: VersionTable) -> None:
    inputs = ClusterInputs(registry_user="puller", registry_password="pw-9d1c7e0a-not-in-the-job")
    job = trainer_job(training_stack, versions, training_run(), inputs)
    assert "pw-9d1c7e0a-not-in-the-job" not in json.dumps(job)
    pod = job["spec"]["template"]["spec"]
    for container in [*pod["initContainers"], *pod["containers"]]:
        assert all("PASSWORD" not in e["name"] for e in container.get("env", [])), container["name"]
    for pull in pod["initContainers"][:2]:
        assert pull["envFrom"] == [{"secretRef": {"name": REGISTRY_AUTH, "optional": True}}]


def test_a_named_node_pins_the_job_and_the_job_passes_the_schema(
        training_stack: Stack, versions: VersionTable) -> None:
    job = trainer_job(training_stack, versions, training_run(node="node1"))
    assert job["spec"]["template"]["spec"]["nodeSelector"] == {
        "trainer": "true", "kubernetes.io/hostname": "node1"}
    validate_objects([job], versions)


def test_a_cluster_trainer_on_a_node_outside_the_cluster_is_refused(tmp_path: Path) -> None:
    text = TRAINING_STACK.replace("agents: [node1], ", "")
    with pytest.raises(PodiumError, match=r"kubernetes\.trainer.*node1 is not a cluster node"):
        write_stack(tmp_path / "outside", text)


def test_a_cluster_trainer_lays_no_trainer_role_on_nodes(training_stack: Stack,
                                                         versions: VersionTable) -> None:
    assert not [a for a in make_plan(training_stack, versions) if a.component == "trainer"]
    on_nodes = training_stack.model_copy(update={"kubernetes": training_stack.kubernetes.model_copy(
        update={"trainer": False})})
    assert [a.host for a in make_plan(on_nodes, versions) if a.component == "trainer"] == ["node1"]
