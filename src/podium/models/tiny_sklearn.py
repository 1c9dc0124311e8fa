"""Train a small scikit-learn pipeline on iris and save it as skops with a JSON sidecar."""

from __future__ import annotations

import io
import json
import os
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import skops.io
from sklearn.datasets import load_iris
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

SIDECAR_SUFFIX = ".json"
# A fixed timestamp for every zip member, as reproducible-build tools do (1980 is zip's epoch).
_ZIP_TIME = (1980, 1, 1, 0, 0, 0)


def sidecar_path(model: Path) -> Path:
    """Where the sidecar of `model` lives: iris.skops -> iris.json."""
    return model.with_suffix(SIDECAR_SUFFIX)


def write_sklearn(out: Path, *, seed: int, size: str) -> Path:
    """Train StandardScaler + LogisticRegression on iris, write `out` (.skops) and its sidecar.

    Args:
        out: the .skops file to create; the sidecar goes beside it (same stem, .json).
        seed: seeds the classifier and the choice of the example row.
        size: only "tiny" exists for this kind.

    Example:
        >>> write_sklearn(Path("/tmp/iris.skops"), seed=0, size="tiny")  # doctest: +SKIP
    """
    features, labels = load_iris(return_X_y=True)
    model = Pipeline([
        ("scale", StandardScaler()),
        ("classify", LogisticRegression(random_state=seed, max_iter=500)),
    ]).fit(features, labels)

    row = int(np.random.default_rng(seed).integers(len(features)))
    example = features[row : row + 1]
    sidecar: dict[str, Any] = {
        "format": "skops",
        "model_file": out.name,
        "input": {"name": "input-0", "datatype": "FP64", "shape": [-1, features.shape[1]]},
        "feature_names": list(load_iris().feature_names),
        "example_input": example.tolist(),
        "expected_prediction": model.predict(example).tolist(),
        "trusted_types": sorted(skops.io.get_untrusted_types(data=skops.io.dumps(model))),
        "seed": seed,
        "size": size,
    }
    atomic_write(out, stable_skops_bytes(skops.io.dumps(model)))
    atomic_write(sidecar_path(out),
                  (json.dumps(sidecar, indent=2, sort_keys=True) + "\n").encode())
    return out


def stable_skops_bytes(data: bytes) -> bytes:
    """Rewrite a skops archive so equal models give equal bytes.

    skops names arrays and memo entries after id() of the live objects and
    stamps zip members with the current time; both change per run. Ids are
    renumbered in order of first appearance (a bijection, so memo sharing is
    kept) and members get a fixed timestamp and order.
    """
    with zipfile.ZipFile(io.BytesIO(data)) as src:
        schema = json.loads(src.read("schema.json"))
        ids: dict[int, int] = {}
        _renumber(schema, ids)
        members = {"schema.json": json.dumps(schema, indent=2).encode()}
        for name in src.namelist():
            if name.endswith(".npy"):
                members[f"{ids[int(name[:-4])]}.npy"] = src.read(name)
            elif name != "schema.json":
                members[name] = src.read(name)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_STORED) as dst:
        for name in sorted(members):
            dst.writestr(zipfile.ZipInfo(name, date_time=_ZIP_TIME), members[name])
    return buf.getvalue()


def _renumber(node: Any, ids: dict[int, int]) -> None:
    if isinstance(node, dict):
        if "__id__" in node:
            node["__id__"] = ids.setdefault(node["__id__"], len(ids))
        if isinstance(node.get("file"), str) and node["file"].endswith(".npy"):
            old = int(node["file"][:-4])
            node["file"] = f"{ids.setdefault(old, len(ids))}.npy"
        for value in node.values():
            _renumber(value, ids)
    elif isinstance(node, list):
        for value in node:
            _renumber(value, ids)


def atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    tmp.replace(path)
