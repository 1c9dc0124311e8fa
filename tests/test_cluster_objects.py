"""The objects built from a stack: what runs where, with which labels, probes, GPUs and config."""

from __future__ import annotations

import base64
import json

import yaml

from podium.cluster import ClusterInputs, build_objects, render_manifests, workloads
from podium.cluster.gateway import gateway_config
from podium.plan.components import COMPONENT_NAMES
from podium.services.gateway.config import GatewayConfig
from podium.stack.model import Stack
from podium.stack.ports import replicas
from podium.stack.versions import VersionTable
from tests.fixtures_cluster import cluster_stack, small_stack, versions

__all__ = ["cluster_stack", "small_stack", "versions"]

INPUTS = ClusterInputs(registry_user="puller", registry_password="pw-not-logged",
                       ca_pem="-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n",
                       gateway_tls_cert="CERT", gateway_tls_key="KEY",
                       gateway_store_password="db-secret", gateway_admin_token_sha256="a" * 64)


def by_name(objects: list[dict], kind: str) -> dict[str, dict]:
    return {o["metadata"]["name"]: o for o in objects if o["kind"] == kind}


def test_every_object_carries_the_labels_prune_selects_on(cluster_stack: Stack,
                                                          versions: VersionTable) -> None:
    for obj in build_objects(cluster_stack, versions, INPUTS):
        labels = obj["metadata"]["labels"]
        where = f"{obj['kind']}/{obj['metadata']['name']}"
        assert labels["app.kubernetes.io/managed-by"] == "podium", where
        assert labels["podium.io/stack"] == "clustered", where
        assert labels["podium.io/component"] in COMPONENT_NAMES, where
        if obj["kind"] != "Namespace":
            assert obj["metadata"]["namespace"] == "podium-ai", where


def test_one_pinned_deployment_per_replica_on_the_plans_node_and_port(
    cluster_stack: Stack, versions: VersionTable
) -> None:
    deployments = by_name(build_objects(cluster_stack, versions), "Deployment")
    for engine in cluster_stack.engines:
        for rep in replicas(engine):
            dep = deployments.pop(f"{engine.name}-{rep.index}")
            pod = dep["spec"]["template"]["spec"]
            assert pod["nodeSelector"]["kubernetes.io/hostname"] == rep.node
            ports = {p["name"]: (p["containerPort"], p["hostPort"])
                     for p in pod["containers"][0]["ports"]}
            assert ports["http"] == (rep.port, rep.port), dep["metadata"]["name"]
            assert dep["spec"]["strategy"] == {"type": "Recreate"}
            # The selector must pick this replica's pods only, or two Deployments fight over pods.
            assert dep["spec"]["selector"]["matchLabels"]["podium.io/replica"] == str(rep.index)
            assert set(dep["spec"]["selector"]["matchLabels"].items()) <= set(
                dep["spec"]["template"]["metadata"]["labels"].items())
    assert set(deployments) == {"gateway-ctl", "gateway-cpu1"}
    # Node labels the stack declares become node selectors.
    gpu = by_name(build_objects(cluster_stack, versions), "Deployment")["chat-gpu-0"]
    assert gpu["spec"]["template"]["spec"]["nodeSelector"]["podium.io/pool"] == "gpu"


def test_gpu_engines_request_their_gpus_and_cpu_engines_none(cluster_stack: Stack,
                                                             versions: VersionTable) -> None:
    deps = by_name(build_objects(cluster_stack, versions), "Deployment")
    limits = {n: d["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]
              for n, d in deps.items()}
    assert limits["chat-gpu-0"]["nvidia.com/gpu"] == "2"
    assert limits["chat-sg-0"]["nvidia.com/gpu"] == "1"
    assert "nvidia.com/gpu" not in limits["chat-cpu-0"]
    assert "nvidia.com/gpu" not in limits["iris-0"]
    assert all("memory" in lim for lim in limits.values())
    vllm = deps["chat-gpu-0"]["spec"]["template"]["spec"]["containers"][0]["command"]
    assert vllm[vllm.index("--tensor-parallel-size") + 1] == "2"
    tolerations = deps["chat-gpu-0"]["spec"]["template"]["spec"]["tolerations"]
    assert tolerations[0]["key"] == "nvidia.com/gpu"


def test_model_pull_init_container_pulls_the_pinned_version_from_the_stacks_registry(
    cluster_stack: Stack, small_stack: Stack, versions: VersionTable
) -> None:
    dep = by_name(build_objects(cluster_stack, versions, INPUTS), "Deployment")["chat-gpu-0"]
    init = dep["spec"]["template"]["spec"]["initContainers"][0]
    # The alias `stable` resolves to the version the stack pins, so every replica gets the same.
    assert init["command"][:4] == ["podium", "model", "pull", "tiny-hf:1"]
    assert init["command"][init["command"].index("--registry") + 1] == "10.70.0.10:5000"
    assert init["command"][-2:] == ["--ca", "/etc/podium/ca/ca.pem"]
    assert init["image"] == "10.70.0.1:8081/podium/podium:0.1.0"
    assert init["envFrom"] == [{"secretRef": {"name": "podium-registry-auth", "optional": True}}]
    small = by_name(build_objects(small_stack, versions), "Deployment")["chat-0"]
    small_init = small["spec"]["template"]["spec"]["initContainers"][0]
    assert "--insecure" in small_init["command"]
    assert small_init["image"] == "podium/podium:0.1.0"


def test_engine_args_become_flags_and_false_flags_are_left_out(cluster_stack: Stack,
                                                               versions: VersionTable) -> None:
    dep = by_name(build_objects(cluster_stack, versions), "Deployment")["chat-cpu-1"]
    command = dep["spec"]["template"]["spec"]["containers"][0]["command"]
    assert command[command.index("--ctx-size") + 1] == "2048"
    assert "--no-webui" in command and "--flash-attn" not in command
    assert command[command.index("--port") + 1] == "8080"  # replica 1 is alone on ctl


def test_gateway_config_is_valid_for_the_gateway_and_lists_every_replica(
    cluster_stack: Stack, versions: VersionTable
) -> None:
    config = GatewayConfig.model_validate(gateway_config(cluster_stack, INPUTS))
    assert config.models["tiny-llama"].replicas == [
        "http://10.70.0.12:8080", "http://10.70.0.10:8080", "http://10.70.0.12:8081"]
    assert config.models["iris"].kind == "predictive"
    assert config.models["tiny-llama"].price.prompt_per_1k == 0.1
    assert config.store.startswith("postgresql+psycopg://podium@10.70.0.10:5432/")
    assert "db-secret" not in config.store
    objects = build_objects(cluster_stack, versions, INPUTS)
    cm = by_name(objects, "ConfigMap")["gateway-config"]
    assert GatewayConfig.model_validate(yaml.safe_load(cm["data"]["gateway.yaml"])) == config
    # /metrics has its own port on the cluster too, where Prometheus is pointed.
    gw = cluster_stack.gateway
    assert gw is not None
    assert config.metrics_address() == ("0.0.0.0", gw.port + 1)
    gateways = {n: d for n, d in by_name(objects, "Deployment").items() if n.startswith("gateway-")}
    assert gateways, "no gateway Deployment"
    for name, dep in gateways.items():
        pod = dep["spec"]["template"]
        ports = {p["name"]: (p["containerPort"], p["hostPort"])
                 for p in pod["spec"]["containers"][0]["ports"]}
        assert ports["metrics"] == (gw.port + 1, gw.port + 1), name
        assert pod["metadata"]["annotations"]["prometheus.io/port"] == str(gw.port + 1), name
        assert ports["grpc"] == (gw.port + 3, gw.port + 3), f"{name}: gRPC on the node's address"


def test_the_cluster_gateway_serves_grpc_on_its_port_and_service(
    cluster_stack: Stack, versions: VersionTable
) -> None:
    gw = cluster_stack.gateway
    assert gw is not None
    config = GatewayConfig.model_validate(gateway_config(cluster_stack, INPUTS))
    assert config.grpc_listen is not None
    assert (config.grpc_listen.host, config.grpc_listen.port) == ("0.0.0.0", gw.port + 3)
    # The API's certificate, and REST to engines (the cluster's replicas are Services).
    assert config.tls is not None and config.grpc_tls is None
    assert all(m.grpc_replicas is None for m in config.models.values())
    service = by_name(build_objects(cluster_stack, versions, INPUTS), "Service")["gateway"]
    ports = {p["name"]: (p["port"], p["targetPort"]) for p in service["spec"]["ports"]}
    assert ports == {"gateway": (gw.port, "gateway"), "grpc": (gw.port + 3, "grpc")}


def test_secrets_only_from_inputs_and_never_rendered_without_them(
    cluster_stack: Stack, versions: VersionTable
) -> None:
    assert not by_name(build_objects(cluster_stack, versions), "Secret")
    secrets = by_name(build_objects(cluster_stack, versions, INPUTS), "Secret")
    assert set(secrets) == {"podium-registry-auth", "podium-gateway-tls", "podium-gateway-store"}
    store = secrets["podium-gateway-store"]["data"]["password"]
    assert base64.b64decode(store) == b"db-secret"
    assert secrets["podium-gateway-tls"]["type"] == "kubernetes.io/tls"
    assert "pw-not-logged" not in repr(INPUTS) and "db-secret" not in repr(INPUTS)
    rendered = "".join(render_manifests(cluster_stack, versions).values())
    assert "kind: Secret" not in rendered


def test_config_change_changes_the_pod_annotation_so_pods_roll(
    cluster_stack: Stack, versions: VersionTable
) -> None:
    before = by_name(build_objects(cluster_stack, versions), "Deployment")
    changed = cluster_stack.model_copy(update={"engines": [
        e.model_copy(update={"args": {**e.args, "ctx-size": 4096}}) if e.name == "chat-cpu" else e
        for e in cluster_stack.engines]})
    after = by_name(build_objects(changed, versions), "Deployment")
    key = "podium.io/config-hash"

    def annotation(deps: dict[str, dict], name: str) -> str:
        return deps[name]["spec"]["template"]["metadata"]["annotations"][key]

    assert annotation(before, "chat-cpu-0") != annotation(after, "chat-cpu-0")
    assert annotation(before, "iris-0") == annotation(after, "iris-0")


def test_predictive_engine_gets_mlserver_settings_per_replica(cluster_stack: Stack,
                                                              versions: VersionTable) -> None:
    maps = by_name(build_objects(cluster_stack, versions), "ConfigMap")
    settings = json.loads(maps["iris-1-mlserver"]["data"]["settings.json"])
    ports = (settings["http_port"], settings["grpc_port"], settings["metrics_port"])
    assert ports == (8303, 8304, 8305)
    model = json.loads(maps["iris-1-mlserver"]["data"]["model-settings.json"])
    assert model["implementation"] == "podium.services.mlserver_skops.SkopsModel"
    assert model["parameters"]["uri"] == "/models/iris/1"


def test_an_onnx_model_on_the_cluster_gets_podiums_onnx_runtime(cluster_stack: Stack,
                                                                 versions: VersionTable) -> None:
    models = [m.model_copy(update={"format": "onnx"}) if m.name == "iris" else m
              for m in cluster_stack.models]
    maps = by_name(build_objects(cluster_stack.model_copy(update={"models": models}), versions),
                   "ConfigMap")
    model = json.loads(maps["iris-0-mlserver"]["data"]["model-settings.json"])
    assert model["implementation"] == "podium.services.mlserver_onnx.OnnxModel"


def test_workloads_follow_the_plans_component_order(cluster_stack: Stack,
                                                    versions: VersionTable) -> None:
    names = [w.name for w in workloads(cluster_stack, versions)]
    assert names[0] == "namespace"
    assert names == ["namespace", "registry", "chat-cpu", "chat-gpu", "chat-sg", "iris",
                     "monitoring", "gateway"]
    order = {c: i for i, c in enumerate(COMPONENT_NAMES)}
    comps = [order[w.component] for w in workloads(cluster_stack, versions)[1:]]
    assert comps == sorted(comps)


def test_render_writes_numbered_multi_document_files(small_stack: Stack,
                                                     versions: VersionTable) -> None:
    files = render_manifests(small_stack, versions)
    assert list(files) == ["00-namespace.yaml", "01-registry.yaml", "02-chat.yaml",
                           "03-gateway.yaml"]
    docs = [d for d in yaml.safe_load_all(files["03-gateway.yaml"]) if d]
    kinds = [d["kind"] for d in docs]
    assert kinds == ["ConfigMap", "PersistentVolumeClaim", "Deployment", "Service"]


def test_a_stack_without_kubernetes_has_no_cluster_objects(small_stack: Stack,
                                                           versions: VersionTable) -> None:
    assert build_objects(small_stack.model_copy(update={"kubernetes": None}), versions) == []
