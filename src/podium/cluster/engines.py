"""Engines that run on the cluster: one node-pinned Deployment per replica (the same replicas,
nodes and ports `podium plan` gives the host layer), a Service per engine, and their config."""

from __future__ import annotations

import json
from typing import Any

from podium.cluster.inputs import ClusterInputs
from podium.cluster.meta import Manifest, content_hash, image, podium_image
from podium.cluster.shapes import (
    MODELS_MOUNT,
    config_map,
    deployment,
    http_probe,
    model_dir,
    model_pull,
    service,
)
from podium.engine_files import QUIET_ENV
from podium.stack.devices import gpu_count, uses_gpu
from podium.stack.model import Stack
from podium.stack.ports import Replica, replicas
from podium.stack.sections import Engine, Model
from podium.stack.versions import VersionTable

SKOPS_RUNTIME = "podium.services.mlserver_skops.SkopsModel"
SKLEARN_RUNTIME = "mlserver_sklearn.SKLearnModel"
ONNX_RUNTIME = "podium.services.mlserver_onnx.OnnxModel"
MLSERVER_REPOSITORY = "/srv/mlserver"

# Requests and limits per engine kind until the stack declares its own. Memory limits leave
# room for the model in RAM; GPU engines hold their weights in GPU memory.
RESOURCES: dict[str, dict[str, dict[str, str]]] = {
    "llamacpp": {"requests": {"cpu": "1", "memory": "1Gi"}, "limits": {"memory": "16Gi"}},
    "vllm": {"requests": {"cpu": "2", "memory": "8Gi"}, "limits": {"memory": "64Gi"}},
    "sglang": {"requests": {"cpu": "2", "memory": "8Gi"}, "limits": {"memory": "64Gi"}},
    "predictive": {"requests": {"cpu": "250m", "memory": "256Mi"}, "limits": {"memory": "2Gi"}},
}
# Loading weights can take minutes: the startup probe allows this long before liveness counts.
STARTUP_SECONDS = {"llamacpp": 300, "vllm": 1800, "sglang": 1800, "predictive": 300}


def cli_args(args: dict[str, str | int | float | bool]) -> list[str]:
    """The stack's engine `args` as flags: `true` is a bare flag, `false` leaves it out."""
    out: list[str] = []
    for key, value in args.items():
        if value is True:
            out.append(f"--{key}")
        elif value is not False:
            out += [f"--{key}", str(value)]
    return out


def _command(engine: Engine, model: Model, rep: Replica) -> list[str]:
    folder, port = model_dir(model), str(rep.port)
    extra = cli_args(engine.args)
    if engine.kind == "llamacpp":
        # The GGUF keeps the file name it was pushed with; serve the one file in the folder.
        gpu = ["--n-gpu-layers", "999"] if uses_gpu(engine) else []
        gguf = f'"$(find {folder} -name "*.gguf" | sort | head -n1)"'
        script = f'exec llama-server --model {gguf} "$@"'
        return ["sh", "-c", script, "llama-server", "--alias", model.name, "--host", "0.0.0.0",
                "--port", port, "--metrics", *gpu, *extra]
    if engine.kind == "vllm":
        tp = ["--tensor-parallel-size", str(gpu_count(engine))] if gpu_count(engine) > 1 else []
        return ["vllm", "serve", folder, "--served-model-name", model.name, "--host", "0.0.0.0",
                "--port", port, *tp, *extra]
    if engine.kind == "sglang":
        tp = ["--tp", str(gpu_count(engine))] if gpu_count(engine) > 1 else []
        return ["python3", "-m", "sglang.launch_server", "--model-path", folder,
                "--served-model-name", model.name, "--host", "0.0.0.0", "--port", port,
                "--enable-metrics", *tp, *extra]
    return ["mlserver", "start", f"{MLSERVER_REPOSITORY}/{rep.index}"]


def _mlserver_files(engine: Engine, model: Model, rep: Replica) -> dict[str, str]:
    """settings.json and model-settings.json, as the predictive role writes them on a host."""
    assert rep.grpc_port is not None and rep.metrics_port is not None
    settings = {
        # MLServer's parallel workers crash under uvloop >= 0.22; serve in-process.
        "parallel_workers": 0, "host": "0.0.0.0", "http_port": rep.port,
        "grpc_port": rep.grpc_port, "metrics_port": rep.metrics_port,
        "load_models_at_startup": True,
    }
    runtime = {"skops": SKOPS_RUNTIME, "onnx": ONNX_RUNTIME}.get(model.format, SKLEARN_RUNTIME)
    model_settings = {
        "name": model.name,
        "implementation": runtime,
        "parameters": {
            "uri": model_dir(model),
            "extra": {"trusted_types": model.trusted_types, "trusted": model.trusted},
        },
    }
    return {"settings.json": json.dumps(settings, indent=2, sort_keys=True),
            "model-settings.json": json.dumps(model_settings, indent=2, sort_keys=True)}


def _ports(rep: Replica) -> list[dict[str, Any]]:
    named = [("http", rep.port), ("grpc", rep.grpc_port), ("metrics", rep.metrics_port)]
    return [{"name": n, "containerPort": p, "hostPort": p, "protocol": "TCP"}
            for n, p in named if p is not None]


def _probes(engine: Engine) -> dict[str, Any]:
    ready, live = ("/v2/health/ready", "/v2/health/live") if engine.kind == "predictive" else (
        "/health", "/health")
    period = 10
    return {
        "startupProbe": http_probe(live, "http", period=period,
                                   failures=STARTUP_SECONDS[engine.kind] // period),
        "readinessProbe": http_probe(ready, "http", period=5, failures=3),
        "livenessProbe": http_probe(live, "http", period=period, failures=6),
    }


def engine_objects(stack: Stack, versions: VersionTable, engine: Engine,
                   inputs: ClusterInputs) -> list[Manifest]:
    component = f"engine-{engine.kind}"
    model = stack.model(engine.model)
    init, volumes = model_pull(stack, podium_image(stack, versions), model, inputs,
                               f"engine {engine.name}")
    resources: dict[str, Any] = json.loads(json.dumps(RESOURCES[engine.kind]))
    if gpu_count(engine):
        resources["limits"]["nvidia.com/gpu"] = str(gpu_count(engine))
    out: list[Manifest] = []
    for rep in replicas(engine):
        mounts = [{"name": "models", "mountPath": MODELS_MOUNT, "readOnly": True}]
        pod_volumes = list(volumes)
        config: dict[str, str] = {}
        if engine.kind == "predictive":
            config = _mlserver_files(engine, model, rep)
            name = f"{engine.name}-{rep.index}-mlserver"
            out.append(config_map(stack, component, engine.name, name, config))
            pod_volumes.append({"name": "mlserver", "configMap": {"name": name}})
            mounts.append({"name": "mlserver", "mountPath": f"{MLSERVER_REPOSITORY}/{rep.index}"})
        if uses_gpu(engine) and engine.kind in ("vllm", "sglang"):
            # NCCL and the tokenizer workers need more shared memory than the 64MiB default.
            shm = {"medium": "Memory", "sizeLimit": "8Gi"}
            pod_volumes.append({"name": "shm", "emptyDir": shm})
            mounts.append({"name": "shm", "mountPath": "/dev/shm"})
        command = _command(engine, model, rep)
        container = {
            "name": engine.kind,
            "image": image(stack, versions, component),
            "command": command,
            # The same quiet environment as the engine's systemd unit on a host.
            "env": [{"name": k, "value": v} for k, v in sorted(QUIET_ENV.items())],
            "ports": _ports(rep),
            "resources": resources,
            "volumeMounts": mounts,
            **_probes(engine),
        }
        metrics_port = rep.metrics_port or rep.port
        out.append(
            deployment(
                stack, component, engine.name, f"{engine.name}-{rep.index}", node=rep.node,
                containers=[container], init_containers=[init], volumes=pod_volumes,
                config_hash=content_hash(command, config, model.model_dump(mode="json")),
                extra_labels={"podium.io/replica": str(rep.index)}, gpus=gpu_count(engine),
                annotations={"prometheus.io/scrape": "true",
                             "prometheus.io/port": str(metrics_port)},
            )
        )
    ports = [("http", engine.port)]
    if engine.kind == "predictive":
        ports = [("http", engine.port), ("grpc", engine.port + 1), ("metrics", engine.port + 2)]
    out.append(service(stack, component, engine.name, engine.name, ports))
    return out
