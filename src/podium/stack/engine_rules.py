"""Rules of a stack's models and engines: formats each engine serves, adapters over their bases,
code that comes with a model, and the devices and GPUs the engines are placed on."""

from __future__ import annotations

from collections.abc import Iterator

from podium.stack.devices import gpu_count, gpus_wanted, uses_gpu
from podium.stack.model import Stack
from podium.stack.problems import Problem
from podium.stack.sections import Engine, Model

# SGLang's CPU engine needs sgl-kernel's CPU build, which no package index carries (README,
# "SGLang on CPU"): a model that must run on CPU goes to vLLM's CPU build instead.
SGLANG_ON_CPU = "serve the model on CPU with kind vllm and device: cpu"

# The one format of base and adapter that each engine able to serve adapters loads.
ADAPTER_FORMATS = {"llamacpp": "gguf", "vllm": "safetensors"}
# The flags that load an adapter model's LoRA; a second one in the args would load another.
ADAPTER_ARGS = {"lora", "lora-scaled", "lora-init-without-apply", "enable-lora", "lora-modules"}
ENGINE_FORMATS = {
    "llamacpp": {"gguf"},
    "vllm": {"safetensors"},
    "sglang": {"safetensors"},
    "predictive": {"skops", "joblib", "onnx"},
}


def model_rules(stack: Stack) -> Iterator[Problem]:
    seen: set[tuple[str, str]] = set()
    for m, model in enumerate(stack.models):
        key = (model.name, model.version)
        if key in seen:
            yield Problem(("models", m, "version"), model.version, "is declared twice for this model")
        seen.add(key)
        if model.format == "joblib" and not model.trusted:
            yield Problem(
                ("models", m, "format"),
                model.format,
                "is a pickle format that runs code when loaded; use skops, or set trusted: true",
            )
        yield from _adapter_model(stack, m, model)


def engine_rules(stack: Stack) -> Iterator[Problem]:
    names: set[str] = set()
    for e, engine in enumerate(stack.engines):
        if engine.name in names:
            yield Problem(("engines", e, "name"), engine.name, "is declared twice; engine names are unique")
        names.add(engine.name)
        try:
            model = stack.model(engine.model)
        except KeyError:
            refs = [f"{m.name}:{t}" for m in stack.models for t in [m.version, *m.aliases]]
            yield Problem(
                ("engines", e, "model"),
                engine.model,
                f"is not a model version or alias in models; declared: {', '.join(refs) or 'none'}",
            )
        else:
            yield from _remote_code(engine, e, model)
            if model.adapter is not None:
                yield from _adapter_engine(stack, engine, e, model)
            elif model.format not in ENGINE_FORMATS[engine.kind]:
                *others, last = sorted(ENGINE_FORMATS[engine.kind])
                allowed = f"{', '.join(others)} or {last}" if others else last
                yield Problem(
                    ("engines", e, "model"),
                    engine.model,
                    f"is {model.format}, but {engine.kind} serves {allowed}",
                )
        yield from _engine_devices(stack, e)


def _adapter_model(stack: Stack, m: int, model: Model) -> Iterator[Problem]:
    """An adapter model names both halves, over a base of this stack that is no adapter itself."""
    if (model.base is None) != (model.adapter is None):
        given, missing = ("base", "adapter") if model.adapter is None else ("adapter", "base")
        yield Problem(("models", m, given), getattr(model, given),
                      f"needs {missing} as well: an adapter model is served as adapter: NAME:VERSION "
                      "over base: MODEL:VERSION")
        return
    if model.base is None:
        return
    try:
        base = stack.model(model.base)
    except KeyError:
        refs = [f"{b.name}:{t}" for b in stack.models if b.adapter is None for t in [b.version, *b.aliases]]
        yield Problem(("models", m, "base"), model.base,
                      f"is not a model version or alias in models; declared: {', '.join(refs) or 'none'}")
        return
    if base.adapter is not None:
        yield Problem(("models", m, "base"), model.base,
                      "is itself an adapter model; name the model it was trained from")


def _adapter_engine(stack: Stack, engine: Engine, e: int, model: Model) -> Iterator[Problem]:
    """Only llama.cpp (a GGUF LoRA over a GGUF base) and vLLM (a PEFT adapter over safetensors)
    load an adapter beside their base."""
    if engine.kind not in ADAPTER_FORMATS:
        yield Problem(("engines", e, "kind"), engine.kind,
                      f"cannot serve adapter model {model.name}; serve it with kind llamacpp or vllm")
        return
    if stack.kubernetes and engine.name in stack.kubernetes.engines:
        yield Problem(("kubernetes", "engines", stack.kubernetes.engines.index(engine.name)), engine.name,
                      f"serves adapter model {model.name}, which runs as a systemd unit only; "
                      "leave this engine out of kubernetes.engines")
        return
    for key in sorted(set(engine.args) & ADAPTER_ARGS):
        yield Problem(("engines", e, "args", key), engine.args[key],
                      f"is set by Podium for adapter model {model.name}; remove it from the engine's args")
    try:
        base: Model | None = stack.model(model.base or "")
    except KeyError:
        base = None
    if base is None or base.adapter is not None:
        return  # models[].base says so
    wanted = ADAPTER_FORMATS[engine.kind]
    if base.format != wanted:
        yield Problem(("engines", e, "model"), engine.model,
                      f"is an adapter over {model.base}, which is {base.format}, but {engine.kind} serves "
                      f"adapters over {wanted} bases only; serve a {wanted} base")
    elif model.format != wanted:
        yield Problem(("engines", e, "model"), engine.model,
                      f"is a {model.format} adapter, but {engine.kind} loads {wanted} adapters only; "
                      f"set format: {wanted} on model {model.name}")


def _remote_code(engine: Engine, e: int, model: Model) -> Iterator[Problem]:
    """vLLM and SGLang run Python files shipped beside the weights when asked to: like a pickle,
    that is code from the model, so the model must be marked trusted as joblib ones are."""
    if model.trusted:
        return
    for key, value in engine.args.items():
        if key.replace("_", "-").lower() == "trust-remote-code" and value not in (False, "false", "False"):
            yield Problem(
                ("engines", e, "args", key),
                value,
                f"makes {engine.kind} engine {engine.name} run Python code that comes with model "
                f"{model.name}; set trusted: true on that model if you trust its code, or drop the arg",
            )


def _engine_devices(stack: Stack, e: int) -> Iterator[Problem]:
    engine = stack.engines[e]
    known = {n.name: n for n in stack.nodes}
    if engine.kind == "sglang" and engine.device == "cpu":
        yield Problem(("engines", e, "device"), "cpu",
                      f"is not supported by SGLang; use gpu, or {SGLANG_ON_CPU}")
        return
    if engine.kind == "predictive" and engine.device == "gpu":
        yield Problem(("engines", e, "device"), "gpu",
                      "is not used by the predictive engine (scikit-learn, ONNX Runtime's CPU build); use cpu")
    if not uses_gpu(engine):
        return
    for i, name in enumerate(engine.nodes):
        node = known.get(name)
        if node is None:
            continue
        if node.gpus == 0:
            fix = {"vllm": "set device: cpu on the engine",
                   "sglang": f"place it on a GPU node, or {SGLANG_ON_CPU}"}.get(engine.kind, "place it on a GPU node")
            yield Problem(
                ("engines", e, "nodes", i),
                name,
                f"has no GPUs but {engine.kind} needs one; {fix}",
            )
        elif gpu_count(engine) > node.gpus:
            yield Problem(
                ("engines", e, "gpus_per_replica"),
                engine.gpus_per_replica,
                f"is more than the {node.gpus} GPUs of node {name}",
            )


def gpu_capacity(stack: Stack) -> Iterator[Problem]:
    """Replicas on one node never share a GPU: what the engines placed there hold together must
    fit the node, or a replica would start on a GPU another one already fills."""
    on_cluster = set(stack.kubernetes.engines) if stack.kubernetes else set()
    engines = [e for e in stack.engines if e.name not in on_cluster]
    for node in stack.nodes:
        wanted = gpus_wanted(engines, node.name)
        total = sum(wanted.values())
        if node.gpus == 0 or total <= node.gpus:
            continue
        e = next(i for i, eng in enumerate(stack.engines) if eng.name in wanted)
        holders = ", ".join(f"{name} {count}" for name, count in wanted.items())
        yield Problem(
            ("engines", e, "replicas"),
            stack.engines[e].replicas,
            f"places engines needing {total} GPUs on node {node.name} ({holders}), which has "
            f"{node.gpus}; lower replicas or gpus_per_replica, or spread the engines over more nodes",
        )
