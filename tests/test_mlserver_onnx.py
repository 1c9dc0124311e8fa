"""ONNX models on the predictive engine: a real MLServer serving the tiny digits CNN through
Podium's ONNX Runtime runtime, called through a real gateway over v2 REST and, with
tritonclient.grpc, over the gateway's gRPC port."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import tritonclient.grpc as triton
from tritonclient.utils import InferenceServerException

from podium.models import make_tiny
from podium.models.tiny_sklearn import sidecar_path
from podium.registry import artifact
from podium.registry.signature import model_signature
from podium.registry.trust import check_trust
from tests.fixtures_engines import EngineServer, add_mlserver_model, engine_dir, mlserver, tiny_sklearn
from tests.fixtures_gateway import GatewayFactory, GatewayProcess, free_port, http, usage_rows

__all__ = ["engine_dir", "mlserver", "tiny_sklearn"]  # fixtures, imported so pytest finds them

pytestmark = pytest.mark.engines
ONNX_RUNTIME = "podium.services.mlserver_onnx.OnnxModel"
MODEL = "digits"


@pytest.fixture(scope="module")
def tiny_onnx(engine_dir: Path) -> Path:
    return make_tiny("onnx", engine_dir / "onnx" / f"{MODEL}.onnx")


@pytest.fixture(scope="module")
def digits(mlserver: EngineServer, tiny_onnx: Path) -> EngineServer:
    """The shared MLServer, with the ONNX model loaded beside iris as the role writes it."""
    assert mlserver.repository is not None
    add_mlserver_model(mlserver.repository, {"name": MODEL, "implementation": ONNX_RUNTIME,
                                             "parameters": {"uri": str(tiny_onnx)}})
    loaded = httpx.post(f"{mlserver.url}/v2/repository/models/{MODEL}/load", timeout=120)
    assert loaded.status_code == 200, f"{loaded.text}\n{mlserver.log_tail()}"
    return mlserver


@pytest.fixture(scope="module")
def gw(digits: EngineServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    factory = GatewayFactory(tmp_path_factory.mktemp("gateway-onnx"))
    port = free_port()
    try:
        gateway = factory.start(
            models={MODEL: {"kind": "predictive", "served_name": MODEL, "replicas": [digits.url]}},
            grpc_listen={"host": "127.0.0.1", "port": port})
        gateway.grpc = f"127.0.0.1:{port}"  # type: ignore[attr-defined]
        yield gateway
    finally:
        factory.stop_all()


def example(tiny_onnx: Path) -> tuple[np.ndarray[Any, Any], list[int]]:
    sidecar = json.loads(sidecar_path(tiny_onnx).read_text())
    return np.array(sidecar["example_input"], dtype=np.float32), sidecar["expected_prediction"]


def pushed(tiny_onnx: Path) -> dict[str, Any]:
    files = artifact.relative_files(tiny_onnx)
    signature = model_signature(tiny_onnx, files, "onnx", check_trust(tiny_onnx, files, "onnx"))
    assert signature is not None
    return signature


def test_rest_metadata_is_the_pushed_graph_and_a_request_built_from_it_is_answered(
        gw: GatewayProcess, tiny_onnx: Path) -> None:
    key = gw.new_key("onnx-rest", models=(MODEL,))
    status, _, body = http("GET", f"{gw.url}/v2/models/{MODEL}", key=key)
    assert status == 200, body
    metadata = json.loads(body)
    signature = pushed(tiny_onnx)
    assert (metadata["inputs"], metadata["outputs"]) == (signature["inputs"], signature["outputs"])

    image, label = example(tiny_onnx)
    [declared] = metadata["inputs"]
    batch = np.concatenate([image, image])
    request = {"inputs": [{"name": declared["name"], "datatype": declared["datatype"],
                           "shape": list(batch.shape), "data": batch.ravel().tolist()}]}
    status, _, body = http("POST", f"{gw.url}/v2/models/{MODEL}/infer", key=key, body=request)
    assert status == 200, body
    outputs = {o["name"]: o for o in json.loads(body)["outputs"]}
    assert outputs["label"]["data"] == label * 2 and outputs["label"]["shape"] == [2, 1]
    assert outputs["probabilities"]["datatype"] == "FP32"
    assert outputs["probabilities"]["shape"] == [2, 10]
    assert abs(sum(outputs["probabilities"]["data"][:10]) - 1) < 1e-4
    rows = usage_rows(gw.store, "onnx-rest")
    assert [(r["endpoint"], r["status"]) for r in rows][-1] == ("/infer", 200)


def test_tritonclient_grpc_metadata_and_infer_through_the_gateway(gw: GatewayProcess,
                                                                  tiny_onnx: Path) -> None:
    key = gw.new_key("onnx-grpc", models=(MODEL,))
    auth = {"authorization": f"Bearer {key}"}
    client = triton.InferenceServerClient(gw.grpc)  # type: ignore[attr-defined]
    metadata = client.get_model_metadata(MODEL, headers=auth, as_json=True)
    assert metadata["inputs"] == [{"name": "image", "datatype": "FP32", "shape": ["-1", "1", "8", "8"]}]
    assert [(o["name"], o["datatype"]) for o in metadata["outputs"]] == [
        ("label", "INT64"), ("probabilities", "FP32")]

    image, label = example(tiny_onnx)
    tensor = triton.InferInput("image", list(image.shape), "FP32")
    tensor.set_data_from_numpy(image)
    result = client.infer(MODEL, [tensor], headers=auth,
                          outputs=[triton.InferRequestedOutput("label")])
    assert result.as_numpy("label").ravel().tolist() == label
    assert result.as_numpy("probabilities") is None  # only what was asked for
    rows = usage_rows(gw.store, "onnx-grpc")
    assert [(r["endpoint"], r["status"], r["model"]) for r in rows] == [
        ("grpc/metadata", 200, MODEL), ("grpc/infer", 200, MODEL)]


def test_a_request_the_graph_cannot_take_is_refused_in_one_sentence(gw: GatewayProcess,
                                                                    tiny_onnx: Path) -> None:
    key = gw.new_key("onnx-bad", models=(MODEL,))
    image, _ = example(tiny_onnx)

    def infer(**changes: Any) -> tuple[int, str]:
        tensor = {"name": "image", "datatype": "FP32", "shape": [1, 1, 8, 8],
                  "data": image.ravel().tolist(), **changes}
        status, _, body = http("POST", f"{gw.url}/v2/models/{MODEL}/infer", key=key,
                               body={"inputs": [tensor]})
        return status, json.loads(body)["error"]

    status, error = infer(datatype="FP64")
    assert status == 400 and "is FP64, but the model takes FP32; send it as FP32" in error
    status, error = infer(name="pixels")
    assert status == 400 and "takes the inputs image; the request gave pixels" in error
    status, error = infer(shape=[1, 1, 4, 16])
    assert status == 400 and "refused the request" in error

    tensor = triton.InferInput("image", [1, 1, 8, 8], "FP64")
    tensor.set_data_from_numpy(image.astype(np.float64))
    client = triton.InferenceServerClient(gw.grpc)  # type: ignore[attr-defined]
    with pytest.raises(InferenceServerException) as refused:
        client.infer(MODEL, [tensor], headers={"authorization": f"Bearer {key}"})
    assert str(refused.value.status()) == "StatusCode.INVALID_ARGUMENT"
    assert "the model takes FP32" in str(refused.value.message())
