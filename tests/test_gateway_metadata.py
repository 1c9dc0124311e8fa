"""Open Inference Protocol model metadata: read from the model at push, served through the
gateway by a real MLServer, and enough for a client to build a request from it alone."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import skops.io
from sklearn.linear_model import LinearRegression

from podium.registry import artifact
from podium.registry.signature import model_signature
from podium.registry.trust import check_trust
from podium.services.model_signature import sklearn_signature
from tests.fixtures_engines import EngineServer, engine_dir, mlserver, tiny_sklearn
from tests.fixtures_gateway import GatewayFactory, GatewayProcess, http

__all__ = ["engine_dir", "mlserver", "tiny_sklearn"]  # fixtures, imported so pytest finds them


def pushed_signature(model: Path) -> dict:
    """What a push records in the model's config blob for this skops file."""
    files = artifact.relative_files(model)
    trust = check_trust(model, files, "skops",
                        trusted_types=skops.io.get_untrusted_types(file=model))
    described = artifact.describe(model, files, "skops")
    config = json.loads(artifact.model_config(model.stem, "1", "skops", described, "test",
                                              trust, model_signature(model, files, "skops",
                                                                     trust)))
    return config["signature"]


def test_a_pushed_iris_model_records_four_fp64_features_and_its_class_outputs(
        tiny_sklearn: Path) -> None:
    assert pushed_signature(tiny_sklearn) == {
        "inputs": [{"name": "input-0", "datatype": "FP64", "shape": [-1, 4]}],
        "outputs": [{"name": "predict", "datatype": "INT64", "shape": [-1, 1]},
                    {"name": "predict_proba", "datatype": "FP64", "shape": [-1, 3]}],
    }


def test_a_float32_regressor_has_fp32_inputs_and_one_fp64_output() -> None:
    features = np.arange(12, dtype=np.float32).reshape(6, 2)
    model = LinearRegression().fit(features, features.sum(axis=1))
    model.coef_ = model.coef_.astype(np.float32)
    assert sklearn_signature(model) == {
        "inputs": [{"name": "input-0", "datatype": "FP32", "shape": [-1, 2]}],
        "outputs": [{"name": "predict", "datatype": "FP64", "shape": [-1, 1]}],
    }


def test_models_without_a_readable_signature_keep_the_config_they_had(tmp_path: Path) -> None:
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF" + bytes(64))
    files = artifact.relative_files(gguf)
    trust = check_trust(gguf, files, "gguf")
    assert model_signature(gguf, files, "gguf", trust) is None
    described = artifact.describe(gguf, files, "gguf")
    # No signature key at all: GGUF digests pushed before stay the same.
    assert b"signature" not in artifact.model_config("m", "1", "gguf", described, "m", trust)


@pytest.fixture(scope="module")
def gw(mlserver: EngineServer, tmp_path_factory: pytest.TempPathFactory
       ) -> Iterator[GatewayProcess]:
    factory = GatewayFactory(tmp_path_factory.mktemp("gateway-metadata"))
    try:
        yield factory.start(models={"iris": {"kind": "predictive", "served_name": mlserver.model,
                                             "replicas": [mlserver.url]}})
    finally:
        factory.stop_all()


@pytest.mark.engines
def test_metadata_through_the_gateway_is_the_pushed_signature_and_builds_a_request(
        gw: GatewayProcess, tiny_sklearn: Path) -> None:
    key = gw.new_key("metadata")
    status, _, body = http("GET", gw.url + "/v2/models/iris", key=key)
    assert status == 200, body
    metadata = json.loads(body)
    signature = pushed_signature(tiny_sklearn)
    assert (metadata["inputs"], metadata["outputs"]) == (
        signature["inputs"], signature["outputs"])

    # A request built from the metadata alone: two rows of the declared width and type.
    [tensor] = metadata["inputs"]
    width = tensor["shape"][1]
    request = {"inputs": [{"name": tensor["name"], "datatype": tensor["datatype"],
                           "shape": [2, width], "data": [5.1, 3.5, 1.4, 0.2] * 2}],
               "outputs": [{"name": o["name"]} for o in metadata["outputs"]]}
    status, _, body = http("POST", gw.url + "/v2/models/iris/infer", key=key, body=request)
    assert status == 200, body
    outputs = {o["name"]: o for o in json.loads(body)["outputs"]}
    for declared in metadata["outputs"]:
        got = outputs[declared["name"]]
        assert got["datatype"] == declared["datatype"]
        assert got["shape"] == [2, *declared["shape"][1:]]
