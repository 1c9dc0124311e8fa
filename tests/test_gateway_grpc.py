"""The Open Inference Protocol over gRPC through a real gateway to a real MLServer, called with
tritonclient.grpc (a client Podium did not write)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as triton
import yaml
from roles.gateway.verify import GRPC_CHECK
from tritonclient.grpc import service_pb2 as pb
from tritonclient.utils import InferenceServerException

from podium.models.tiny_sklearn import sidecar_path
from podium.registry.ca import CaScope, ca_certificate, server_certificate
from podium.services.gateway.errors import GatewayError
from podium.services.gateway.grpc_tensors import infer_body
from tests.fixtures_engines import EngineServer, engine_dir, mlserver, tiny_sklearn
from tests.fixtures_gateway import (
    GatewayFactory,
    GatewayProcess,
    free_port,
    models_for,
    usage_rows,
)

__all__ = ["engine_dir", "mlserver", "tiny_sklearn"]  # fixtures, imported so pytest finds them

pytestmark = pytest.mark.engines
STACK = "grpc-test"


@pytest.fixture(scope="module")
def factory(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayFactory]:
    gateways = GatewayFactory(tmp_path_factory.mktemp("gateway-grpc"))
    try:
        yield gateways
    finally:
        gateways.stop_all()


@pytest.fixture(scope="module")
def gw(factory: GatewayFactory, mlserver: EngineServer) -> GatewayProcess:
    # 'tiny' is an LLM name on a replica nobody serves: it is never called, only refused.
    models = models_for("http://127.0.0.1:9", "unused", mlserver.url, mlserver.model)
    gateway = factory.start(models=models, grpc_listen={"host": "127.0.0.1", "port": free_port()})
    gateway.grpc = f"127.0.0.1:{yaml_port(gateway.config_path)}"  # type: ignore[attr-defined]
    return gateway


def yaml_port(config: Path) -> int:
    return int(yaml.safe_load(config.read_text())["grpc_listen"]["port"])


def client(gw: GatewayProcess) -> triton.InferenceServerClient:
    return triton.InferenceServerClient(gw.grpc)  # type: ignore[attr-defined]


def bearer(key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}


def iris_inputs(tiny_sklearn: Path) -> tuple[list[triton.InferInput], list[int]]:
    sidecar = json.loads(sidecar_path(tiny_sklearn).read_text())
    rows = np.array(sidecar["example_input"] * 2, dtype=np.float64)
    tensor = triton.InferInput(sidecar["input"]["name"], list(rows.shape), "FP64")
    tensor.set_data_from_numpy(rows)
    return [tensor], sidecar["expected_prediction"] * 2


def test_metadata_and_infer_over_grpc_are_metered_like_rest(gw: GatewayProcess,
                                                            tiny_sklearn: Path) -> None:
    key = gw.new_key("grpc-user", models=("iris",))
    grpc = client(gw)
    assert grpc.is_server_live()
    assert grpc.is_model_ready("iris", headers=bearer(key))
    metadata = grpc.get_model_metadata("iris", headers=bearer(key), as_json=True)
    assert metadata["name"] == "iris"
    assert metadata["inputs"] == [{"name": "input-0", "datatype": "FP64", "shape": ["-1", "4"]}]
    assert [o["name"] for o in metadata["outputs"]] == ["predict", "predict_proba"]

    inputs, expected = iris_inputs(tiny_sklearn)
    result = grpc.infer("iris", inputs, headers=bearer(key),
                        outputs=[triton.InferRequestedOutput("predict")])
    assert result.as_numpy("predict").ravel().tolist() == expected
    rows = usage_rows(gw.store, "grpc-user")
    assert [(r["endpoint"], r["status"], r["model"]) for r in rows] == [
        ("grpc/ready", 200, "iris"), ("grpc/metadata", 200, "iris"), ("grpc/infer", 200, "iris")]

    with urlopen(gw.metrics_url) as text:
        assert 'podium_gateway_requests_total{key="grpc-user",model="iris",status="200"} 3.0' in text


def urlopen(url: str):  # type: ignore[no-untyped-def]
    import contextlib
    import urllib.request

    @contextlib.contextmanager
    def read() -> Iterator[str]:
        with urllib.request.urlopen(url, timeout=10) as resp:
            yield resp.read().decode()

    return read()


def code_of(call) -> str:  # type: ignore[no-untyped-def]
    with pytest.raises(InferenceServerException) as refused:
        call()
    return str(refused.value.status())


def test_errors_are_grpc_status_codes(gw: GatewayProcess, tiny_sklearn: Path) -> None:
    grpc = client(gw)
    key = gw.new_key("grpc-iris-only", models=("iris",))
    other = gw.new_key("grpc-llm-only", models=("tiny",))
    inputs, _ = iris_inputs(tiny_sklearn)
    assert code_of(lambda: grpc.infer("iris", inputs)) == "StatusCode.UNAUTHENTICATED"
    assert code_of(lambda: grpc.infer("iris", inputs, headers=bearer("pdm-not-a-key"))) == (
        "StatusCode.UNAUTHENTICATED")
    # A model outside the key's list, and one that does not exist, are answered alike.
    assert code_of(lambda: grpc.infer("iris", inputs, headers=bearer(other))) == (
        "StatusCode.PERMISSION_DENIED")
    assert code_of(lambda: grpc.get_model_metadata("nope", headers=bearer(key))) == (
        "StatusCode.PERMISSION_DENIED")
    # An LLM is served on /v1, not over the Open Inference Protocol.
    assert code_of(lambda: grpc.infer("tiny", inputs, headers=bearer(other))) == (
        "StatusCode.INVALID_ARGUMENT")
    limited = gw.new_key("grpc-one-a-minute", models=("iris",), rpm=1)
    grpc.infer("iris", inputs, headers=bearer(limited))
    assert code_of(lambda: grpc.infer("iris", inputs, headers=bearer(limited))) == (
        "StatusCode.RESOURCE_EXHAUSTED")


def mlserver_calls(mlserver: EngineServer) -> dict[str, float]:
    """MLServer's own count of what it served: gRPC calls by method, REST infer requests."""
    from prometheus_client.parser import text_string_to_metric_families

    assert mlserver.repository is not None
    port = json.loads((mlserver.repository / "settings.json").read_text())["metrics_port"]
    with urlopen(f"http://127.0.0.1:{port}/metrics") as text:
        families = list(text_string_to_metric_families(text))
    counts: dict[str, float] = {}
    for family in families:
        for sample in family.samples:
            if sample.name == "grpc_server_handled_total":
                method = sample.labels["grpc_method"]
                counts[method] = counts.get(method, 0) + sample.value
            elif sample.name == "rest_server_requests_total" and "infer" in sample.labels.get("path", ""):
                counts["rest infer"] = counts.get("rest infer", 0) + sample.value
    return counts


def test_grpc_calls_reach_mlservers_own_grpc_port_unconverted(factory: GatewayFactory,
                                                              mlserver: EngineServer,
                                                              tiny_sklearn: Path) -> None:
    assert mlserver.repository is not None
    grpc_port = json.loads((mlserver.repository / "settings.json").read_text())["grpc_port"]
    models = {"iris": {"kind": "predictive", "served_name": mlserver.model, "replicas": [mlserver.url],
                       "grpc_replicas": [f"127.0.0.1:{grpc_port}"]}}
    port = free_port()
    gateway = factory.start(models=models, grpc_listen={"host": "127.0.0.1", "port": port})
    key = gateway.new_key("grpc-direct", models=("iris",))
    grpc = triton.InferenceServerClient(f"127.0.0.1:{port}")
    deadline = time.monotonic() + 30
    while not grpc.is_model_ready("iris", headers=bearer(key)):
        assert time.monotonic() < deadline, gateway.log()[-2000:]
        time.sleep(0.2)

    before = mlserver_calls(mlserver)
    metadata = grpc.get_model_metadata("iris", headers=bearer(key), as_json=True)
    assert metadata["name"] == "iris"
    assert metadata["inputs"] == [{"name": "input-0", "datatype": "FP64", "shape": ["-1", "4"]}]
    inputs, expected = iris_inputs(tiny_sklearn)
    result = grpc.infer("iris", inputs, headers=bearer(key))
    assert result.get_response().model_name == "iris"
    assert result.as_numpy("predict").ravel().tolist() == expected
    after = mlserver_calls(mlserver)
    served = {m: after.get(m, 0) - before.get(m, 0) for m in ("ModelMetadata", "ModelInfer", "rest infer")}
    assert served == {"ModelMetadata": 1, "ModelInfer": 1, "rest infer": 0}, served

    # The engine's own gRPC errors come back as their codes, and are metered like REST ones.
    wrong = triton.InferInput("not-an-input", [1, 4], "FP64")
    wrong.set_data_from_numpy(np.zeros((1, 4)))
    code = code_of(lambda: grpc.infer("iris", [wrong, *inputs], headers=bearer(key)))
    rows = usage_rows(gateway.store, "grpc-direct")
    assert [(r["endpoint"], r["status"]) for r in rows][-3:-1] == [("grpc/metadata", 200), ("grpc/infer", 200)]
    assert code == "StatusCode.INVALID_ARGUMENT", code
    assert (rows[-1]["endpoint"], rows[-1]["status"]) == ("grpc/infer", 400)


def test_raw_contents_that_do_not_fit_their_datatype_are_refused_before_the_engine() -> None:
    request = pb.ModelInferRequest(model_name="iris")
    request.inputs.add(name="input-0", datatype="FP64", shape=[1, 1])
    request.raw_input_contents.append(b"\0" * 7)  # not a whole FP64
    with pytest.raises(GatewayError) as refused:
        infer_body(request)
    assert refused.value.status == 400 and "FP64" in refused.value.message
    request.raw_input_contents[0] = np.array([1.5], dtype=np.float64).tobytes()
    assert infer_body(request)["inputs"][0]["data"] == [1.5]


def test_grpc_with_tls_from_the_stack_ca(factory: GatewayFactory, gw: GatewayProcess,
                                         mlserver: EngineServer, tmp_path: Path,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PODIUM_STATE_DIR", str(tmp_path / "state"))
    ca = ca_certificate(STACK, CaScope(("gw",), ("127.0.0.1/32",)), replace=True)
    # gRPC's TLS (BoringSSL) cannot check an IP address against the stack CA's name
    # constraints ("unsupported name constraint type"), so the gRPC listener's certificate
    # names the node only, and clients connect by that name.
    cert, cert_key = server_certificate(STACK, "gateway-grpc", [], ["gw"])
    rest_cert, rest_key = server_certificate(STACK, "gateway", ["127.0.0.1"], ["gw"])
    port = free_port()
    # Shares the first gateway's store, so the key made there holds here.
    tls = factory.config(models=models_for("http://127.0.0.1:9", "unused", mlserver.url,
                                           mlserver.model),
                         store=gw.store,
                         tls={"cert": str(rest_cert), "key": str(rest_key)},
                         grpc_tls={"cert": str(cert), "key": str(cert_key)},
                         grpc_listen={"host": "127.0.0.1", "port": port})
    log = tls.log_path.open("ab")
    tls._log = log
    tls.proc = subprocess.Popen([sys.executable, "-m", "podium.services.gateway", "--config",
                                 str(tls.config_path), "--log-level", "warning"],
                                stdout=log, stderr=subprocess.STDOUT)
    key = gw.new_key("grpc-tls", models=("iris",))
    secure = triton.InferenceServerClient(f"127.0.0.1:{port}", ssl=True,
                                          root_certificates=str(ca),
                                          channel_args=[("grpc.ssl_target_name_override", "gw")])
    deadline = time.monotonic() + 30
    while True:
        try:
            if secure.is_server_live():
                break
        except InferenceServerException:
            assert time.monotonic() < deadline, tls.log()[-2000:]
            time.sleep(0.2)
    assert secure.is_model_ready("iris", headers=bearer(key))
    # A client that does not trust the stack CA gets no answer.
    untrusting = triton.InferenceServerClient(f"127.0.0.1:{port}", ssl=True)
    assert code_of(lambda: untrusting.is_server_live()) == "StatusCode.UNAVAILABLE"
    plain = triton.InferenceServerClient(f"127.0.0.1:{port}")
    assert code_of(lambda: plain.is_server_live()) == "StatusCode.UNAVAILABLE"
    # The check `podium verify` runs on a gateway node, here against this gateway.
    check = subprocess.run([sys.executable, "-c", GRPC_CHECK, f"127.0.0.1:{port}", str(ca), "gw"],
                           capture_output=True, text=True, timeout=60)
    assert check.stdout.split() == ["live", "StatusCode.UNAUTHENTICATED"], check.stderr


def test_the_stack_opens_the_grpc_port_to_every_client_and_the_gateway_serves_it() -> None:
    from podium.files import files_for
    from podium.plan.components import BY_NAME
    from podium.render import REPO
    from podium.services.gateway.config import GatewayConfig
    from podium.stack import load_stack

    stack = load_stack(REPO / "stacks" / "lab")
    assert stack.gateway is not None
    node, port = stack.gateway.nodes[0], stack.gateway.port + 3
    settings = BY_NAME["base"].settings(stack, node)
    by_port = {o["port"]: o for o in settings["openings"]}
    assert by_port[port]["sources"] == [], "gRPC is for every client, as the API port"
    assert f"tcp dport {port} accept" in files_for("base", node, settings)["nftables.conf"]
    rendered = files_for("gateway", node, BY_NAME["gateway"].settings(stack, node))
    config = GatewayConfig.model_validate(yaml.safe_load(rendered["gateway.yaml"]))
    assert config.grpc_listen is not None and config.grpc_listen.port == port
    assert config.grpc_tls is not None and config.grpc_tls.cert.name == "grpc-tls.crt"
    # gRPC calls go to MLServer's own gRPC port on each replica (API port + 1).
    assert config.models["iris"].grpc_replicas == ["10.77.0.12:8091"]
    assert config.models["digits"].grpc_replicas == ["10.77.0.12:8094"]
    assert config.models["tiny-llama"].grpc_replicas is None


def test_a_grpc_port_another_listener_holds_is_refused_naming_the_field(tmp_path: Path) -> None:
    import shutil

    from podium.errors import InvalidInput
    from podium.render import REPO
    from podium.stack import load_stack

    folder = tmp_path / "lab"
    shutil.copytree(REPO / "stacks" / "lab", folder)
    text = (folder / "stack.yaml").read_text()
    (folder / "stack.yaml").write_text(text.replace("  port: 8443\n", "  port: 8443\n  grpc_port: 8444\n", 1))
    with pytest.raises(InvalidInput) as refused:
        load_stack(folder)
    assert "gateway.grpc_port = 8444" in str(refused.value)
    assert "gateway metrics" in str(refused.value)
