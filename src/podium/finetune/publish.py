"""Put a fine-tune's dataset and its adapter in the registry, the adapter with its lineage."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from podium.finetune.dataset import ChatDataset
from podium.registry import ModelRef, Registry, media
from podium.registry.artifact import ModelFile, canonical_json, sha256_hex
from podium.registry.ref import DATASET_PREFIX, check_name

DATASET_MEDIA_TYPE = "application/vnd.podium.dataset.chat.v1+jsonl"


def push_dataset(registry: Registry, dataset: ChatDataset, name: str) -> str:
    """Push the checked dataset as `datasets/<name>:<first 12 hex of its sha256>`; returns the
    manifest digest. The same bytes pushed again change nothing.

    Example:
        >>> push_dataset(Registry.from_env("127.0.0.1:5000", insecure=True),
        ...              load_dataset(Path("chat.jsonl")), "support")  # doctest: +SKIP
        'sha256:…'
    """
    repository, tag = f"{DATASET_PREFIX}{check_name(name)}", dataset.sha256[:12]
    size = dataset.path.stat().st_size
    layer = ModelFile(dataset.path.name, size, dataset.sha256, DATASET_MEDIA_TYPE)
    config = canonical_json({"schema": 1, "kind": "chat-dataset", "name": name,
                             "conversations": len(dataset.conversations), "files": [layer.to_dict()]})
    manifest = canonical_json({
        "schemaVersion": 2, "mediaType": media.OCI_MANIFEST, "artifactType": DATASET_MEDIA_TYPE,
        "config": {"mediaType": media.CONFIG_MEDIA_TYPE, "digest": "sha256:" + sha256_hex(config),
                   "size": len(config)},
        "layers": [{"mediaType": DATASET_MEDIA_TYPE, "digest": layer.digest, "size": size,
                    "annotations": {media.ANNOTATION_TITLE: layer.path}}],
        "annotations": {media.ANNOTATION_NAME: name, media.ANNOTATION_VERSION: tag},
    })
    digest = "sha256:" + sha256_hex(manifest)
    # The registry's own upload steps, so a dataset travels exactly as model files do.
    container = registry.http.get_container(f"{registry.address}/{repository}:{tag}")
    registry._upload_file(container, dataset.path, layer)
    registry._upload_bytes(container, config)
    registry._put_manifest(repository, tag, manifest, media.OCI_MANIFEST, digest)
    return digest


def lineage(base: ModelRef, base_digest: str, dataset_name: str, dataset_digest: str,
            hyperparameters: dict[str, Any], trainer: str) -> dict[str, Any]:
    """The lineage an adapter's config records: enough to say what made it and to train it again."""
    return {
        "kind": "lora-adapter",
        "base": {"model": str(base), "digest": base_digest},
        "dataset": {"name": f"{DATASET_PREFIX}{dataset_name}", "digest": dataset_digest},
        "hyperparameters": dict(hyperparameters),
        "trainer": trainer,
    }


def push_adapter(registry: Registry, adapter_gguf: Path, name: str, version: str,
                 recorded: dict[str, Any]) -> str:
    """Push the GGUF LoRA as `models/<name>:<version>` with `recorded` lineage; returns its digest."""
    return registry.push(adapter_gguf, name, version, fmt="gguf", source=adapter_gguf.name,
                         lineage=recorded)
