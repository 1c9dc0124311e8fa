"""A fine-tuning run on the cluster: one Kubernetes Job that pulls the dataset and the base model by
digest, trains the LoRA adapter on a node labelled for training and prints it for the CLI to read."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from podium.cluster.inputs import ClusterInputs
from podium.cluster.meta import Manifest, metadata, podium_image
from podium.cluster.meta import image as component_image
from podium.cluster.shapes import registry_pull
from podium.stack.model import TRAINER_LABEL, Stack
from podium.stack.versions import VersionTable

JOB_LABEL = "podium.io/job"
WORK = "/work"
# Where the trainer image keeps the venv and train.py: the same paths the trainer role lays on a node.
TRAINER_HOME = "/opt/podium/trainer"
# Long enough for `podium jobs ls` to show a finished run for a day, then the cluster removes it.
TTL_SECONDS = 86400
RESOURCES = {"requests": {"cpu": "2", "memory": "4Gi"}, "limits": {"memory": "32Gi"}}
# The containers whose logs `podium jobs logs` shows; the last one's log is the adapter itself.
SHOWN = ("dataset-pull", "base-pull", "train")
ADAPTER = "adapter"


@dataclass(frozen=True)
class TrainingRun:
    """What one run trains on and with: everything its adapter's lineage records."""

    job: str
    base: str  # NAME, pulled as NAME@BASE_DIGEST
    base_digest: str
    dataset: str  # NAME under datasets/
    dataset_digest: str
    data_file: str  # the dataset's file name inside its artifact
    hyperparameters: dict[str, Any]
    args: list[str] = field(default_factory=list)  # the hyperparameters as train.py's flags
    trainer: str = ""
    node: str | None = None


def job_name(job: str) -> str:
    """The Job's object name: the job id in lower case (object names allow no capitals)."""
    return job.lower()


def trainer_job(stack: Stack, versions: VersionTable, run: TrainingRun,
                inputs: ClusterInputs | None = None) -> Manifest:
    """The Job of one run, in the stack's namespace, pinned to `run.node` when one was named."""
    inputs = inputs or ClusterInputs()
    versions = versions.for_stack(stack)
    podium = podium_image(stack, versions)
    work = {"name": "work", "mountPath": WORK}
    what = f"fine-tune {run.job}"
    dataset, ca = registry_pull(stack, podium, "dataset-pull",
                                [f"{run.dataset}@{run.dataset_digest}", "--dataset"],
                                f"{WORK}/data", work, inputs, what)
    base, _ = registry_pull(stack, podium, "base-pull", [f"{run.base}@{run.base_digest}"],
                            f"{WORK}/base", work, inputs, what)
    train = {
        "name": "train",
        "image": component_image(stack, versions, "trainer"),
        "command": [f"{TRAINER_HOME}/venv/bin/python", f"{TRAINER_HOME}/train.py",
                    "--base", f"{WORK}/base", "--data", f"{WORK}/data/{run.data_file}",
                    "--out", f"{WORK}/adapter", *run.args],
        # The same offline environment as the node's transient unit: nothing is fetched.
        "env": [{"name": "HF_HUB_OFFLINE", "value": "1"},
                {"name": "TRANSFORMERS_OFFLINE", "value": "1"}],
        "resources": RESOURCES,
        "volumeMounts": [work],
        "securityContext": {"allowPrivilegeEscalation": False},
    }
    # The pod's log is the one way back that needs nothing beyond the API server: the CLI reads
    # the adapter from it, converts and pushes it with its lineage as it does after a node's run.
    adapter = {
        "name": ADAPTER,
        "image": podium,
        "command": ["python3", "-m", "podium.finetune.adapter_log", f"{WORK}/adapter"],
        "resources": {"requests": {"cpu": "100m", "memory": "128Mi"},
                      "limits": {"memory": "512Mi"}},
        "volumeMounts": [{**work, "readOnly": True}],
        "securityContext": {"allowPrivilegeEscalation": False},
    }
    selector = {TRAINER_LABEL: "true"}
    if run.node:
        selector["kubernetes.io/hostname"] = run.node
    meta = metadata(stack, "trainer", "finetune", job_name(run.job))
    meta["labels"][JOB_LABEL] = run.job
    meta["annotations"] = lineage_annotations(run)
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": meta,
        "spec": {
            # A failed run is reported, not retried: a retry would train on from nothing.
            "backoffLimit": 0,
            "ttlSecondsAfterFinished": TTL_SECONDS,
            "template": {
                "metadata": {"labels": dict(meta["labels"]),
                             "annotations": dict(meta["annotations"])},
                "spec": {
                    "restartPolicy": "Never",
                    "nodeSelector": selector,
                    "enableServiceLinks": False,
                    "initContainers": [dataset, base, train],
                    "containers": [adapter],
                    "volumes": [{"name": "work", "emptyDir": {}}, *ca],
                },
            },
        },
    }


def lineage_annotations(run: TrainingRun) -> dict[str, str]:
    """What the run trains on, on the Job itself, so `kubectl describe` tells it as the model does."""
    return {
        "podium.io/base": f"{run.base}@{run.base_digest}",
        "podium.io/dataset": f"{run.dataset}@{run.dataset_digest}",
        "podium.io/hyperparameters": json.dumps(run.hyperparameters, sort_keys=True),
        "podium.io/trainer": run.trainer,
    }
