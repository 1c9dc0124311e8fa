"""Files the engine roles write on a host: one systemd unit per replica (and MLServer's settings),
keyed by their absolute path without the leading '/', built from the engine's settings alone."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from podium.render import render_template

MODELS = "/var/lib/podium/models"
UNIT_DIR = "etc/systemd/system"
PREDICTIVE_CONFIG = "etc/podium/engines"
# Where each kind's venv is reached: a link to the versioned venv (/opt/podium/<kind>-<version>)
# that the role points at the version it installed, so units name no version.
VENV_LINK = "/opt/podium/{name}"
RUNTIME_PATH = "/opt/podium/runtime"
ENGINE_USER = "podium-engine"
# Every engine's environment, in its systemd unit and in its pod alike: nothing installed calls
# out. Usage reports stay off and nothing is fetched from a model hub (models come from the
# registry only). SGLang and MLServer report nothing of their own; they reach the Hugging Face
# hub through its libraries, which the HF_* settings keep offline.
QUIET_ENV = {
    # The cross-tool opt-out; vLLM reads it as well as its own two.
    "DO_NOT_TRACK": "1",
    "VLLM_NO_USAGE_STATS": "1",
    "VLLM_DO_NOT_TRACK": "1",
    # Ray, vLLM's multi-node executor, reports cluster usage unless told not to.
    "RAY_USAGE_STATS_ENABLED": "0",
    "HF_HUB_OFFLINE": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    # llama-server's --offline: a model named by URL or hub repository is never downloaded.
    "LLAMA_ARG_OFFLINE": "1",
}
# The args Podium sets itself; a stack giving them would start the engine twice on one port.
OWNED_ARGS = {
    "llamacpp": {"model", "alias", "host", "port", "metrics"},
    "vllm": {"served-model-name", "host", "port"},
    "sglang": {"model-path", "served-model-name", "host", "port"},
}
VLLM_CPU_KVCACHE_GIB = 1
# Spellings of tensor parallelism in vLLM and SGLang: one given in the stack wins over the default.
TP_ARGS = {"tensor-parallel-size", "tp-size", "tp"}
# How the role and verify learn a replica answers, per kind.
HEALTH_PATH = {"llamacpp": "/health", "vllm": "/health", "sglang": "/health",
               "predictive": "/v2/health/ready"}


def unit_name(kind: str, replica: Mapping[str, Any]) -> str:
    """podium-<kind>-<engine>-<replica>.service: one unit per replica, restarted on its own."""
    return f"podium-{kind}-{replica['engine']}-{replica['replica']}.service"


def model_dir(replica: Mapping[str, Any]) -> str:
    """The node-local folder a replica's model is pulled into, named by its manifest digest."""
    return f"{MODELS}/{replica.get('model_digest') or 'unresolved'}"


def weights_link(replica: Mapping[str, Any]) -> str:
    """A link beside the model's folder to its one weights file (e.g. <digest>.gguf)."""
    return f"{model_dir(replica)}.{replica['model_format']}"


def device(replica: Mapping[str, Any]) -> str:
    """cpu or gpu: `auto` means gpu when the engine asks for GPUs per replica."""
    if replica["device"] == "auto":
        return "gpu" if replica["gpus"] > 0 else "cpu"
    return str(replica["device"])


def venv_name(kind: str, replica: Mapping[str, Any] | None = None) -> str:
    """The venv link a kind's units run from; vLLM keeps CPU and GPU builds apart."""
    names = {"llamacpp": "llamacpp", "predictive": "mlserver", "sglang": "sglang", "vllm": "vllm"}
    name = names[kind]
    if kind == "vllm" and replica is not None and device(replica) == "cpu":
        name += "-cpu"
    return name


def systemd_quote(word: str) -> str:
    """One ExecStart word: systemd expands % and $ and splits on blanks, so escape or quote them.

    A line break cannot be quoted in a unit (it ends the setting), so it is refused; the stack's
    schema refuses control characters before any value gets here.
    """
    if any(c in word for c in "\n\r\x00\x0b\x0c\x85\u2028\u2029"):
        raise ValueError(f"{word!r} holds a line break or NUL, which no unit setting can carry")
    word = word.replace("%", "%%").replace("$", "$$")
    if word and not any(c in word for c in " \t\"'\\;"):
        return word
    escaped = word.replace("\\", "\\\\").replace('"', '\\"')
    return f'"{escaped}"'


def arg_words(args: Mapping[str, Any]) -> list[str]:
    """A stack's engine args as flags: `key: value` → --key value; `key: true` → --key; false drops it."""
    words: list[str] = []
    for key in sorted(args):
        value = args[key]
        if value is False:
            continue
        words.append(f"--{key}")
        if value is not True:
            words.append(str(value))
    return words


def owned_args_given(kind: str, replica: Mapping[str, Any]) -> list[str]:
    """Args of the stack that Podium sets itself (the role refuses them)."""
    return sorted(set(replica["args"]) & OWNED_ARGS.get(kind, set()))


def _command(kind: str, replica: Mapping[str, Any]) -> list[str]:
    venv = VENV_LINK.format(name=venv_name(kind, replica))
    name, port = str(replica["model"]), str(replica["port"])
    if kind == "llamacpp":
        return [f"{venv}/bin/llama-server", "--model", weights_link(replica), "--alias", name,
                "--host", "0.0.0.0", "--port", port, "--metrics", "--no-webui",
                *adapter_words(kind, replica), *arg_words(replica["args"])]
    if kind == "vllm":
        args = dict(replica["args"])
        if "adapter" in replica:
            # vLLM answers the adapter's name with the LoRA and the base's name without it.
            name = str(replica["base_model"])
        if device(replica) == "gpu":
            if replica["gpus"] > 1 and not set(args) & TP_ARGS:
                args["tensor-parallel-size"] = replica["gpus"]
            return [f"{venv}/bin/vllm", "serve", model_dir(replica), "--served-model-name", name,
                    "--host", "0.0.0.0", "--port", port, *adapter_words(kind, replica), *arg_words(args)]
        # torch.compile would triple the CPU build's start-up (about 110 s cold, and a compiler
        # at run time); a stack may still ask for it with `enforce-eager: false`.
        args.setdefault("enforce-eager", True)
        # The `vllm` command looks up a distribution named vllm, which vllm-cpu is not; the
        # server module is the same server.
        return [f"{venv}/bin/python", "-m", "vllm.entrypoints.openai.api_server",
                "--model", model_dir(replica), "--served-model-name", name,
                "--host", "0.0.0.0", "--port", port, *adapter_words(kind, replica), *arg_words(args)]
    if kind == "sglang":
        args = dict(replica["args"])
        if replica["gpus"] > 1 and not set(args) & TP_ARGS:
            args["tp-size"] = replica["gpus"]
        args.setdefault("enable-metrics", True)
        return [f"{venv}/bin/python", "-m", "sglang.launch_server", "--model-path", model_dir(replica),
                "--served-model-name", name, "--host", "0.0.0.0", "--port", port, *arg_words(args)]
    if kind == "predictive":
        return [f"{venv}/bin/mlserver", "start", f"/{predictive_folder(replica)}"]
    raise KeyError(kind)


def weights_repository(replica: Mapping[str, Any]) -> str:
    """The registry repository of the weights a replica pulls: its base's for an adapter model."""
    return str(replica.get("base_model") or replica["model"])


def adapter_words(kind: str, replica: Mapping[str, Any]) -> list[str]:
    """Flags that load an adapter model's LoRA beside its base; none for a plain model.

    llama-server applies `--lora FILE` at scale 1 to every request, so one engine serves one
    adapter; vLLM selects `--lora-modules NAME=FOLDER` by the request's model name."""
    adapter = replica.get("adapter")
    if not adapter:
        return []
    if kind == "llamacpp":
        return ["--lora", weights_link(adapter)]
    return ["--enable-lora", "--lora-modules", f"{replica['model']}={model_dir(adapter)}"]


def _environment(kind: str, replica: Mapping[str, Any]) -> dict[str, str]:
    env = dict(QUIET_ENV)
    if kind == "predictive":
        # Podium's runtimes (podium.services.mlserver_skops, mlserver_onnx) live outside MLServer's venv.
        env["PYTHONPATH"] = RUNTIME_PATH
    if device(replica) == "gpu":
        env["CUDA_VISIBLE_DEVICES"] = ",".join(str(i) for i in replica["gpu_ids"])
    elif kind in ("vllm", "sglang"):
        env["CUDA_VISIBLE_DEVICES"] = ""
    if kind == "vllm" and device(replica) == "cpu":
        env.update(vllm_cpu_environment(replica))
    return dict(sorted(env.items()))


def launch(kind: str, replica: Mapping[str, Any]) -> tuple[list[str], dict[str, str]]:
    """The command and environment a replica's unit runs, unquoted (for a check that starts one
    by hand, such as bench/gpu_check.sh, to run exactly what the role would)."""
    return _command(kind, replica), _environment(kind, replica)


def engine_state(replica: Mapping[str, Any]) -> str:
    """The replica's own writable folder (its unit's StateDirectory, also its HOME)."""
    return f"/var/lib/podium/engines/{replica['engine']}-{replica['replica']}"


def vllm_cpu_environment(replica: Mapping[str, Any]) -> dict[str, str]:
    """What vLLM's CPU build needs beyond the quiet environment: a bounded KV cache, and its
    caches and temporary files in the replica's own folder (the rest of the system is read-only)."""
    state = engine_state(replica)
    return {
        # GiB of host memory for the KV cache; vLLM's default (4 GiB) would not fit a small node.
        "VLLM_CPU_KVCACHE_SPACE": str(VLLM_CPU_KVCACHE_GIB),
        "TORCHINDUCTOR_CACHE_DIR": f"{state}/inductor",
        "VLLM_CACHE_ROOT": f"{state}/vllm-cache",
        "TMPDIR": f"{state}/tmp",
    }


def predictive_folder(replica: Mapping[str, Any]) -> str:
    """MLServer's model repository for one replica: settings.json and one model folder."""
    return f"{PREDICTIVE_CONFIG}/{replica['engine']}-{replica['replica']}"


def _predictive_files(replica: Mapping[str, Any]) -> dict[str, str]:
    folder = predictive_folder(replica)
    return {
        f"{folder}/settings.json": render_template("engine_predictive/settings.json.j2", r=replica),
        f"{folder}/{replica['model']}/model-settings.json": render_template(
            "engine_predictive/model-settings.json.j2", r=replica, uri=weights_link(replica)
        ),
    }


def _builder(kind: str) -> Callable[[str, Mapping[str, Any]], dict[str, str]]:
    def build(host: str, settings: Mapping[str, Any]) -> dict[str, str]:
        out: dict[str, str] = {}
        for replica in settings["replicas"]:
            unit = unit_name(kind, replica)
            out[f"{UNIT_DIR}/{unit}"] = render_template(
                f"engine_{kind}/replica.service.j2",
                host=host,
                r=replica,
                exec_start=" ".join(systemd_quote(w) for w in _command(kind, replica)),
                environment=_environment(kind, replica),
                user=ENGINE_USER,
                model_dir=model_dir(replica),
            )
            if kind == "predictive":
                out.update(_predictive_files(replica))
        return out

    build.__name__ = f"build_{kind}"
    build.__doc__ = f"Files of role engine-{kind} on one host."
    return build


build_llamacpp = _builder("llamacpp")
build_predictive = _builder("predictive")
build_vllm = _builder("vllm")
build_sglang = _builder("sglang")
