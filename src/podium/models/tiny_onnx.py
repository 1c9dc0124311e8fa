"""Build a tiny ONNX vision model (a one-layer CNN reading 8x8 digits) with a JSON sidecar."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from onnx.reference import ReferenceEvaluator
from sklearn.datasets import load_digits
from sklearn.linear_model import LogisticRegression
from threadpoolctl import threadpool_limits

from podium.models.tiny_sklearn import atomic_write, sidecar_path

INPUT = "image"
CHANNELS = 4
# Opset and IR version that ONNX Runtime has read for years, so any pinned runtime serves it.
OPSET = 17
IR_VERSION = 8
# Weights are rounded before they are written, so a BLAS that sums in another order still
# gives the same bytes.
DECIMALS = 4


def _features(images: np.ndarray[Any, Any], kernels: np.ndarray[Any, Any],
              bias: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    """What the graph's Conv (3x3, padding 1), Relu and Flatten make of [n, 8, 8] images."""
    padded = np.pad(images, ((0, 0), (1, 1), (1, 1)))
    windows = np.lib.stride_tricks.sliding_window_view(padded, (3, 3), axis=(1, 2))
    maps = np.einsum("nhwij,cij->nchw", windows, kernels) + bias[None, :, None, None]
    return np.asarray(np.maximum(maps, 0)).reshape(len(images), -1)


def _graph(kernels: np.ndarray[Any, Any], bias: np.ndarray[Any, Any],
           weights: np.ndarray[Any, Any], offsets: np.ndarray[Any, Any]) -> onnx.ModelProto:
    initializers = [
        numpy_helper.from_array(kernels[:, None].astype(np.float32), "conv_w"),
        numpy_helper.from_array(bias.astype(np.float32), "conv_b"),
        numpy_helper.from_array(weights.astype(np.float32), "dense_w"),
        numpy_helper.from_array(offsets.astype(np.float32), "dense_b"),
    ]
    nodes = [
        helper.make_node("Conv", [INPUT, "conv_w", "conv_b"], ["maps"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["maps"], ["active"]),
        helper.make_node("Flatten", ["active"], ["flat"], axis=1),
        helper.make_node("Gemm", ["flat", "dense_w", "dense_b"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1),
        helper.make_node("ArgMax", ["logits"], ["label"], axis=1, keepdims=1),
    ]
    graph = helper.make_graph(
        nodes, "digits",
        [helper.make_tensor_value_info(INPUT, TensorProto.FLOAT, ["N", 1, 8, 8])],
        # The label first: MLServer answers outputs in this order, and checks read the first.
        [helper.make_tensor_value_info("label", TensorProto.INT64, ["N", 1]),
         helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["N", 10])],
        initializers,
    )
    model = helper.make_model(graph, producer_name="podium", ir_version=IR_VERSION,
                              opset_imports=[helper.make_opsetid("", OPSET)])
    onnx.checker.check_model(model, full_check=True)
    return model


def write_onnx(out: Path, *, seed: int, size: str) -> Path:
    """Write `out` (.onnx): random 3x3 convolution kernels (from `seed`) and a dense layer
    trained on scikit-learn's 8x8 digits, with a sidecar holding an example and its label.

    Args:
        out: the .onnx file to create; the sidecar goes beside it (same stem, .json).
        seed: seeds the kernels and the choice of the example image.
        size: only "tiny" exists for this kind.

    Example:
        >>> write_onnx(Path("/tmp/digits.onnx"), seed=0, size="tiny")  # doctest: +SKIP
    """
    digits = load_digits()
    images = (digits.images / 16.0).astype(np.float32)
    rng = np.random.default_rng(seed)
    kernels = rng.normal(0, 0.5, size=(CHANNELS, 3, 3)).round(DECIMALS)
    bias = rng.normal(0, 0.1, size=CHANNELS).round(DECIMALS)
    # One BLAS thread: the fit is small, and BLAS threads spinning on a busy machine make it
    # a hundred times slower.
    with threadpool_limits(1):
        reader = LogisticRegression(max_iter=1000).fit(_features(images, kernels, bias), digits.target)
    model = _graph(kernels, bias, reader.coef_.T.round(DECIMALS), reader.intercept_.round(DECIMALS))

    row = int(rng.integers(len(images)))
    example = images[row : row + 1, None]
    [label] = ReferenceEvaluator(model).run(["label"], {INPUT: example})
    sidecar: dict[str, Any] = {
        "format": "onnx",
        "model_file": out.name,
        "input": {"name": INPUT, "datatype": "FP32", "shape": [-1, 1, 8, 8]},
        "example_input": example.tolist(),
        "expected_prediction": np.asarray(label).ravel().tolist(),
        "true_label": int(digits.target[row]),
        "seed": seed,
        "size": size,
    }
    atomic_write(out, model.SerializeToString(deterministic=True))
    atomic_write(sidecar_path(out), (json.dumps(sidecar, indent=2, sort_keys=True) + "\n").encode())
    return out
