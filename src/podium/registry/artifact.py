"""A model version as an OCI artifact: its files, its config blob and its manifest, as bytes."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from podium.errors import InvalidInput
from podium.registry import media
from podium.registry.trust import Trust

CHUNK = 1 << 20
Progress = Callable[[int], None]


@dataclass(frozen=True)
class ModelFile:
    """One file of a model: where it goes, how big it is, what it hashes to."""

    path: str  # relative, with '/' separators
    size: int
    sha256: str  # hex, no prefix
    media_type: str

    @property
    def digest(self) -> str:
        return "sha256:" + self.sha256

    def to_dict(self) -> dict[str, Any]:
        return {"path": self.path, "size": self.size, "sha256": self.sha256}


def canonical_json(obj: Any) -> bytes:
    """One byte form per value, so pushing the same model twice gives the same digest."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def hash_file(path: Path, progress: Progress | None = None) -> tuple[str, int]:
    """sha256 hex and size of a file, read once in 1 MiB pieces."""
    h = hashlib.sha256()
    size = 0
    with path.open("rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
            size += len(chunk)
            if progress:
                progress(len(chunk))
    return h.hexdigest(), size


def model_path(given: Path | str) -> Path:
    """The file or folder a push sends; an empty path is refused rather than read as ".".

    Path("") is the current directory, so `podium model push ""` (an unset shell variable)
    would push whatever folder the command ran in.
    """
    if isinstance(given, str) and not given.strip():
        raise InvalidInput(
            f"model path {given!r} is empty; give a model file or directory "
            "(write . to push the current directory)"
        )
    return Path(given)


def relative_files(path: Path) -> list[str]:
    """The files a push sends: the file itself, or every regular file under a directory."""
    if path.is_file():
        return [path.name]
    if not path.is_dir():
        raise InvalidInput(
            f"model path {str(path)!r} does not exist; give a model file or directory"
        )
    files = sorted(p.relative_to(path).as_posix() for p in path.rglob("*") if p.is_file())
    if not files:
        raise InvalidInput(f"model directory {str(path)!r} holds no files; give a non-empty one")
    return files


def safe_relpath(title: str) -> str:
    """A layer's file name from the registry, refused if it would land outside the pull folder."""
    rel = PurePosixPath(title)
    if not title or rel.is_absolute() or ".." in rel.parts or "\\" in title or "\0" in title:
        raise InvalidInput(
            f"the model names a file {title!r} outside its own folder; refusing to pull it "
            "(push the model again from a clean directory)"
        )
    return rel.as_posix()


def describe(
    root: Path, files: list[str], fmt: str, progress: Progress | None = None
) -> list[ModelFile]:
    """Hash each file of a model and give it its layer media type."""
    out = []
    for rel in files:
        path = root if root.is_file() else root / rel
        digest, size = hash_file(path, progress)
        out.append(ModelFile(rel, size, digest, media.layer_media_type(rel, fmt)))
    return out


def model_config(
    name: str, version: str, fmt: str, files: list[ModelFile], source: str, trust: Trust,
    signature: dict[str, Any] | None = None, lineage: dict[str, Any] | None = None,
) -> bytes:
    """The config blob: what engines and `podium model show` read without fetching weights.

    signature: the model's inputs and outputs (registry/signature.py), where it has them;
    left out otherwise, so a model without one keeps the digest it always had.
    lineage: what a fine-tuned model was made from (base digest, dataset digest,
    hyperparameters, trainer); left out the same way.
    """
    config: dict[str, Any] = {
        "schema": 1,
        "name": name,
        "version": version,
        "format": fmt,
        "files": [f.to_dict() for f in files],
        "source": source,
        "trust": trust.to_dict(),
    }
    if signature is not None:
        config["signature"] = signature
    if lineage is not None:
        config["lineage"] = lineage
    return canonical_json(config)


def model_manifest(
    name: str, version: str, fmt: str, config: bytes, files: list[ModelFile]
) -> bytes:
    """The OCI image manifest: the config blob and one layer per file, titled with its path."""
    return canonical_json(
        {
            "schemaVersion": 2,
            "mediaType": media.OCI_MANIFEST,
            "artifactType": media.model_media_type(fmt),
            "config": {
                "mediaType": media.CONFIG_MEDIA_TYPE,
                "digest": "sha256:" + sha256_hex(config),
                "size": len(config),
            },
            "layers": [
                {
                    "mediaType": f.media_type,
                    "digest": f.digest,
                    "size": f.size,
                    "annotations": {media.ANNOTATION_TITLE: f.path},
                }
                for f in files
            ],
            "annotations": {
                media.ANNOTATION_NAME: name,
                media.ANNOTATION_VERSION: version,
                media.ANNOTATION_FORMAT: fmt,
            },
        }
    )


def manifest_layers(manifest: dict[str, Any]) -> list[ModelFile]:
    """The files a manifest lists, with their paths checked to stay inside the pull folder."""
    out = []
    for layer in manifest.get("layers", []):
        title = (layer.get("annotations") or {}).get(media.ANNOTATION_TITLE, "")
        digest = str(layer.get("digest", ""))
        if not digest.startswith("sha256:"):
            raise InvalidInput(f"layer {title!r} has digest {digest!r}; only sha256 is accepted")
        out.append(
            ModelFile(
                safe_relpath(str(title)), int(layer["size"]), digest[7:], str(layer["mediaType"])
            )
        )
    return out
