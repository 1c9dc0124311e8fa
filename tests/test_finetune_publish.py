"""A fine-tune in the real registry: the dataset as an artifact, the adapter with its lineage,
`podium model show` printing it, and its base refused removal while the adapter stands."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import httpx

from podium.finetune.dataset import load_dataset
from podium.finetune.publish import lineage, push_adapter, push_dataset
from podium.models import make_tiny
from podium.registry import ModelRef, Registry
from tests.fixtures_registry import RunningRegistry, registry
from tests.test_finetune_dataset import conversation
from tests.test_registry_cli import at, podium, push

__all__ = ["registry"]  # the fixture, imported so pytest finds it

HYPERPARAMETERS = {"epochs": 5, "lr": 0.003, "rank": 8}


def dataset_file(tmp_path: Path) -> Path:
    path = tmp_path / "support.jsonl"
    path.write_text("".join(conversation(f"Q{i}", "Answer.") + "\n" for i in range(50)))
    return path


def test_the_dataset_is_an_artifact_whose_layer_is_the_files_bytes(registry: RunningRegistry,
                                                                   tmp_path: Path) -> None:
    client = Registry.from_env(registry.address, insecure=True)
    dataset = load_dataset(dataset_file(tmp_path))
    digest = push_dataset(client, dataset, "support")
    assert push_dataset(client, dataset, "support") == digest
    base = f"http://{registry.address}/v2/datasets/support"
    manifest = httpx.get(f"{base}/manifests/{dataset.sha256[:12]}",
                         headers={"Accept": "application/vnd.oci.image.manifest.v1+json"})
    assert manifest.status_code == 200
    assert "sha256:" + hashlib.sha256(manifest.content).hexdigest() == digest
    layer = manifest.json()["layers"][0]
    assert layer["digest"] == dataset.digest
    assert httpx.get(f"{base}/blobs/{layer['digest']}").content == dataset.path.read_bytes()
    # Datasets stay out of the model list.
    assert all(t.name != "support" for t in client.ls())


def test_an_adapter_records_its_lineage_and_its_base_cannot_be_removed_under_it(
        registry: RunningRegistry, tmp_path: Path) -> None:
    client = Registry.from_env(registry.address, insecure=True)
    base_digest = push(registry, make_tiny("gguf", tmp_path / "tiny.gguf"), "lineage-base", "1")
    dataset_digest = push_dataset(client, load_dataset(dataset_file(tmp_path)), "support")
    adapter = tmp_path / "support-lora.gguf"
    adapter.write_bytes(make_tiny("gguf", tmp_path / "other.gguf", seed=1).read_bytes())
    recorded = lineage(ModelRef.parse("lineage-base:1"), base_digest, "support", dataset_digest,
                       HYPERPARAMETERS, "trainer-1.0.0")
    adapter_digest = push_adapter(client, adapter, "support-lora", "1", recorded)
    assert podium("tag", "support-lora:1", "stable", *at(registry)).exit_code == 0

    shown = podium("show", "support-lora:stable", "--json", *at(registry))
    assert shown.exit_code == 0, shown.error
    assert json.loads(shown.stdout)["lineage"] == recorded
    text = podium("show", "support-lora:1", *at(registry))
    assert f"base     lineage-base:1 {base_digest}" in text.stdout
    assert f"dataset  datasets/support {dataset_digest}" in text.stdout
    assert "trained  epochs=5 lr=0.003 rank=8" in text.stdout
    assert "trainer  trainer-1.0.0" in text.stdout
    assert "base " not in podium("show", "lineage-base:1", *at(registry)).stdout

    refused = podium("rm", "lineage-base:1", *at(registry))
    assert refused.exit_code == 2
    assert refused.error == (f"lineage-base:1 ({base_digest}) is the base of support-lora:1; "
                             "remove it first (podium model rm support-lora:1)")
    assert podium("show", "lineage-base:1", *at(registry)).exit_code == 0
    assert podium("rm", "support-lora:1", *at(registry)).exit_code == 0
    assert adapter_digest
    assert podium("rm", "lineage-base:1", *at(registry)).exit_code == 0
