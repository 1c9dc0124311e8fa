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
    fmt: the model format; skops and ONNX models are read (loading a joblib file runs its
        code, and a GGUF's inputs are text).
    trust: what check_trust allowed; the skops file is loaded with those types only.

    Example: model_signature(Path("iris.skops"), ["iris.skops"], "skops", Trust())
    """
    if fmt == "onnx":
        return onnx_signature(root, files)
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


def onnx_signature(root: Path, files: Sequence[str]) -> dict[str, Any]:
    """The inputs and outputs an ONNX graph declares, once onnx.checker has passed it; a file
    the checker fails is refused, as ONNX Runtime would fail to serve it."""
    onnx_files = [f for f in files if f.endswith(".onnx")] or list(files)
    if len(onnx_files) != 1:
        raise InvalidInput(
            f"{str(root)!r} holds {len(onnx_files)} .onnx files ({', '.join(onnx_files)}); push "
            "one ONNX model (its .onnx file, or a folder with one .onnx file) at a time"
        )
    path = root if root.is_file() else root / onnx_files[0]
    # Imported here: the models extra (onnx).
    import onnx

    from podium.services.model_signature import tensor

    try:
        model = onnx.load(str(path), load_external_data=False)
        onnx.checker.check_model(model, full_check=True)
    except Exception as exc:  # onnx raises its own errors, or protobuf's for a file that is not ONNX
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InvalidInput(
            f"{str(path)!r} is not a valid ONNX model (onnx.checker: {first}); export it "
            "again with torch.onnx.export, skl2onnx or onnx.helper and check it with "
            "onnx.checker.check_model"
        ) from exc
    graph = model.graph
    weights = {w.name for w in graph.initializer}

    def dims(value: Any) -> list[int | None]:
        return [d.dim_value if d.HasField("dim_value") else None
                for d in value.type.tensor_type.shape.dim]

    def described(values: Any) -> list[dict[str, Any]]:
        return [tensor(v.name, onnx.helper.tensor_dtype_to_np_dtype(v.type.tensor_type.elem_type),
                       dims(v)) for v in values if v.name not in weights]

    return {"inputs": described(graph.input), "outputs": described(graph.output)}
