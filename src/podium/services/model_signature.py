"""The inputs and outputs of a scikit-learn or ONNX model as Open Inference Protocol tensor metadata.

Read twice from the model itself: when it is pushed (recorded in its config blob) and when
MLServer loads it (served at GET /v2/models/NAME). It imports only numpy, as it also runs
inside MLServer's venv.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

# The input name Podium's examples and sidecars use; MLServer's scikit-learn runtime takes
# the first input whatever its name.
INPUT_NAME = "input-0"
_DATATYPES = {"f": {2: "FP16", 4: "FP32", 8: "FP64"},
              "i": {1: "INT8", 2: "INT16", 4: "INT32", 8: "INT64"},
              "u": {1: "UINT8", 2: "UINT16", 4: "UINT32", 8: "UINT64"}}


def datatype(dtype: np.dtype[Any]) -> str:
    """The Open Inference Protocol name of a numpy dtype (strings and objects are BYTES)."""
    if dtype.kind == "b":
        return "BOOL"
    return _DATATYPES.get(dtype.kind, {}).get(dtype.itemsize, "BYTES")


def _fitted_float_dtype(estimator: Any) -> np.dtype[Any]:
    # scikit-learn records no input dtype; the first step's fitted float arrays (a scaler's
    # mean_, a linear model's coef_) have the dtype it converts its input to.
    first = estimator.steps[0][1] if hasattr(estimator, "steps") else estimator
    for name, value in sorted(vars(first).items()):
        if name.endswith("_") and isinstance(value, np.ndarray) and value.dtype.kind == "f":
            return np.dtype(value.dtype)
    return np.dtype(np.float64)


def sklearn_signature(estimator: Any) -> dict[str, list[dict[str, Any]]] | None:
    """{"inputs": [...], "outputs": [...]} of a fitted estimator; None when it names no
    feature count (nothing a client could build a request from).

    Example: sklearn_signature(iris_pipeline)["inputs"]
    == [{"name": "input-0", "datatype": "FP64", "shape": [-1, 4]}]
    """
    features = getattr(estimator, "n_features_in_", None)
    if not isinstance(features, int):
        return None
    inputs = [{"name": INPUT_NAME, "datatype": datatype(_fitted_float_dtype(estimator)),
               "shape": [-1, features]}]
    classes = getattr(estimator, "classes_", None)
    # MLServer answers `predict` as a column: one row per input row.
    predicted = datatype(classes.dtype) if isinstance(classes, np.ndarray) else "FP64"
    outputs = [{"name": "predict", "datatype": predicted, "shape": [-1, 1]}]
    if isinstance(classes, np.ndarray) and hasattr(estimator, "predict_proba"):
        outputs.append({"name": "predict_proba", "datatype": "FP64",
                        "shape": [-1, len(classes)]})
    return {"inputs": inputs, "outputs": outputs}


def tensor(name: str, dtype: Any, dims: Sequence[int | str | None]) -> dict[str, Any]:
    """One input or output of an ONNX graph as tensor metadata; a dimension the graph leaves
    open (a named batch such as "N", or none at all) is -1, as the protocol writes it.

    Example: tensor("image", "float32", ["N", 1, 8, 8])
    == {"name": "image", "datatype": "FP32", "shape": [-1, 1, 8, 8]}
    """
    shape = [d if isinstance(d, int) and d >= 0 else -1 for d in dims]
    return {"name": name, "datatype": datatype(np.dtype(dtype)), "shape": shape}
