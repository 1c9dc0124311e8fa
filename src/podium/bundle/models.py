"""The stack's models in the bundle, each an OCI image layout: the same config, layers and
manifest `podium model push` sends to the registry, so loading them there keeps their digests."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from podium.bundle.manifest import file_sha256
from podium.registry import artifact, media
from podium.registry.signature import model_signature
from podium.registry.sync import model_source
from podium.registry.trust import check_trust
from podium.stack.model import Stack

LAYOUT_VERSION = {"imageLayoutVersion": "1.0.0"}


def write_models(stack: Stack, out: Path) -> list[str]:
    """Write every model of `stack` under `out/<name>/<version>/`; returns the manifest digests."""
    digests = []
    keep = set()
    for index, model in enumerate(stack.models):
        if model.adapter is not None:
            continue  # made on the appliance by `podium finetune`, into its registry; never carried in
        folder = out / model.name / model.version
        keep.add(folder)
        source = model_source(stack, index, model)
        files = artifact.relative_files(source)
        fmt = media.check_format(model.format) if model.format else media.guess_format(source, files)
        trust = check_trust(source, files, fmt, trusted=model.trusted, trusted_types=model.trusted_types)
        described = artifact.describe(source, files, fmt)
        config = artifact.model_config(model.name, model.version, fmt, described, model.source,
                                       trust, model_signature(source, files, fmt, trust))
        manifest = artifact.model_manifest(model.name, model.version, fmt, config, described)
        digest = "sha256:" + artifact.sha256_hex(manifest)
        digests.append(digest)
        blobs = folder / "blobs" / "sha256"
        blobs.mkdir(parents=True, exist_ok=True)
        for f in described:
            _place(blobs / f.sha256, source if source.is_file() else source / f.path, f.size)
        for data in (config, manifest):
            target = blobs / artifact.sha256_hex(data)
            if not target.exists():
                target.write_bytes(data)
        (folder / "oci-layout").write_text(json.dumps(LAYOUT_VERSION) + "\n")
        index_json = {
            "schemaVersion": 2,
            "manifests": [
                {
                    "mediaType": media.OCI_MANIFEST,
                    "digest": digest,
                    "size": len(manifest),
                    "annotations": {"org.opencontainers.image.ref.name": model.version},
                }
            ],
        }
        (folder / "index.json").write_text(json.dumps(index_json, indent=1, sort_keys=True) + "\n")
        _drop_stale_blobs(blobs, {f.sha256 for f in described} | {artifact.sha256_hex(config), digest[7:]})
    _drop_other_models(out, keep)
    return digests


def _place(target: Path, source: Path, size: int) -> None:
    # Blobs are named by their sha256: one whose bytes still hash to its name is the file.
    if target.exists() and target.stat().st_size == size and file_sha256(target) == target.name:
        return
    shutil.copyfile(source, target)


def _drop_stale_blobs(blobs: Path, wanted: set[str]) -> None:
    for blob in blobs.iterdir():
        if blob.name not in wanted:
            blob.unlink()


def _drop_other_models(out: Path, keep: set[Path]) -> None:
    if not out.exists():
        return
    for name in out.iterdir():
        for version in name.iterdir():
            if version not in keep:
                shutil.rmtree(version)
        if not any(name.iterdir()):
            name.rmdir()
