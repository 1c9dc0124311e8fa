"""Role engine-predictive, proved on each host: every replica's unit runs quiet, MLServer is ready with
the model (scikit-learn or ONNX) loaded, a v2 infer call on the model's own example returns its known
prediction, and the metrics port answers, all asked on the node itself."""

import json
import shlex

import pytest

from podium import engine_files
from roles.engine_common import checks


def _get(host, url):
    result = host.run(f"curl -fsS --max-time 20 {shlex.quote(url)}")
    assert result.rc == 0, f"GET {url} failed: {result.stderr.strip()}"
    return result.stdout


def _sidecar(host, replica):
    """The JSON beside the weights (pushed with the model): example input and expected output."""
    folder = f"/{engine_files.predictive_folder(replica)}"
    uri = json.loads(host.file(f"{folder}/{replica['model']}/model-settings.json").content_string)[
        "parameters"]["uri"]
    weights = host.check_output(f"readlink -f {shlex.quote(uri)}")
    sidecar = weights.rsplit(".", 1)[0] + ".json"
    if not host.file(sidecar).exists:
        # Only a model pushed with its example (as `podium model make-tiny` writes) can be checked.
        pytest.skip(f"model {replica['model']} has no example file {sidecar} to check a prediction with")
    return json.loads(host.file(sidecar).content_string)


def _tensor(nested):
    """Shape and row-major data of an example input of any rank (rows of features, images)."""
    shape, level = [], nested
    while isinstance(level, list):
        shape.append(len(level))
        level = level[0]
    data = nested
    for _ in shape[1:]:
        data = [v for part in data for v in part]
    return shape, data


def test_010_units_run_quiet(host, settings):
    for replica in settings["replicas"]:
        checks.runs_quiet(host, "predictive", replica)


def test_020_server_and_model_ready(host, settings):
    for replica in settings["replicas"]:
        checks.ready(host, "predictive", replica)


def test_030_parallel_workers_off(host, settings):
    for replica in settings["replicas"]:
        path = f"/{engine_files.predictive_folder(replica)}/settings.json"
        config = json.loads(host.file(path).content_string)
        assert config["parallel_workers"] == 0, f"{path}: parallel workers crash MLServer 1.7.1 with uvloop"


def test_040_infer_returns_the_known_prediction(host, settings):
    for replica in settings["replicas"]:
        example = _sidecar(host, replica)
        shape, data = _tensor(example["example_input"])
        payload = json.dumps({"inputs": [{
            "name": example["input"]["name"], "datatype": example["input"]["datatype"],
            "shape": shape, "data": data}]})
        url = f"http://127.0.0.1:{replica['port']}/v2/models/{replica['model']}/infer"
        result = host.run(f"curl -fsS --max-time 30 -H 'Content-Type: application/json' "
                          f"-d {shlex.quote(payload)} {url}")
        assert result.rc == 0, f"infer on {replica['engine']} replica {replica['replica']}: {result.stderr}"
        outputs = json.loads(result.stdout)["outputs"]
        assert outputs[0]["data"] == example["expected_prediction"], (
            f"{replica['model']} predicted {outputs[0]['data']}, expected {example['expected_prediction']}"
        )


def test_050_metrics_port(host, settings):
    for replica in settings["replicas"]:
        text = _get(host, f"http://127.0.0.1:{replica['metrics_port']}/metrics")
        assert "model_infer_request" in text or "rest_server_requests" in text, (
            f"metrics port {replica['metrics_port']} of {replica['engine']} shows no MLServer metrics"
        )
