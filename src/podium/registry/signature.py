"""A model's inputs and outputs, read from the model when it is pushed, for its config blob."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from podium.errors import InvalidInput
from podium.registry.trust import Trust


def model_signature(root: Path, files: Sequence[str], fmt: str, trust: Trust
                    ) -> dict[str, Any] | None:
    """{"inputs": [...], "outputs": [...]} of a model that has one to read, else None.

    root: the model file, or the directory holding `files`.
    files: relative paths of the model's files.
    fmt: the model format; only skops models are read (loading a joblib file runs its code,
        and a GGUF's inputs are text).
    trust: what check_trust allowed; the skops file is loaded with those types only.

    Example: model_signature(Path("iris.skops"), ["iris.skops"], "skops", Trust())
    """
    if fmt != "skops":
        return None
    skops_files = [f for f in files if f.endswith(".skops")]
    if len(skops_files) != 1:
        return None
    path = root if root.is_file() else root / skops_files[0]
    # Imported here: the models extra (skops, numpy), which check_trust has already required.
    import skops.io

    from podium.services.model_signature import sklearn_signature

    try:
        estimator = skops.io.load(path, trusted=list(trust.skops_types))
    except Exception as exc:  # skops raises whatever the archive's parser raises
        raise InvalidInput(
            f"{str(path)!r} could not be loaded to read its inputs ({exc}); "
            "save the model with skops.io.dump from a fitted estimator"
        ) from exc
    return sklearn_signature(estimator)
