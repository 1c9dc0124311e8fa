"""Bring a stack's models into its registry (push what is missing, set the aliases) and say which
manifest digest each engine's model reference stands for, so engines pull by digest."""

from __future__ import annotations

from pathlib import Path

from podium.errors import InvalidInput
from podium.registry.access import pull_credential, push_credential, stack_registry
from podium.registry.client import Registry
from podium.registry.ref import ModelRef
from podium.secrets import StackSecrets
from podium.stack.model import Stack
from podium.stack.sections import Model

TINY_PREFIX = "tiny:"
# Tiny models are generated with a fixed seed: the same bytes on every run and every control
# machine, so a re-run finds the version already pushed instead of refusing other files.
TINY_SEED = 0


def sync_models(stack: Stack, push: bool) -> dict[str, str]:
    """Engine model reference ("tiny-llama:stable", "iris:1") → manifest digest.

    push: push each model version the registry lacks from its source and point the stack's
        aliases at it (`podium up`, once the registry runs); False only reads the registry,
        and leaves out engines whose model version is not there yet.

    Example::

        digests = sync_models(load_stack("stacks/lab"), push=True)
        digests["tiny-llama:stable"]  # 'sha256:…'
    """
    if stack.registry is None:
        raise InvalidInput(f"stack {stack.name!r} declares no registry; models need one")
    credential = push_credential(stack.name) if push else pull_credential(stack.name)
    registry = stack_registry(stack, credential)
    versions: dict[tuple[str, str], str] = {}
    adapters: dict[str, str] = {}
    for index, model in enumerate(stack.models):
        if model.adapter is not None:
            digest = adapter_digest(registry, index, model)
            if digest is None and push:
                raise InvalidInput(
                    f"models[{index}].adapter {model.adapter!r} of model {model.name} is not in the "
                    f"registry; train it first with `podium finetune {stack.name} --name "
                    f"{ModelRef.parse(model.adapter).name} ...`, or name an adapter version it holds"
                )
            if digest is not None:
                adapters[model.adapter] = digest
            continue
        digest = _sync_model(stack, registry, index, model, push)
        if digest is not None:
            versions[(model.name, model.version)] = digest
    out: dict[str, str] = {}
    for engine in stack.engines:
        model = stack.model(engine.model)
        if model.adapter is not None:
            # An adapter model's replicas pull its base's weights, and the adapter by its own ref.
            if model.adapter in adapters:
                out[model.adapter] = adapters[model.adapter]
            model = stack.model(model.base or "")
        digest = versions.get((model.name, model.version))
        if digest is not None:
            # An alias stands for the version the stack declares it on, which is where the
            # push above points it.
            out[engine.model] = digest
    return out


def adapter_digest(registry: Registry, index: int, model: Model) -> str | None:
    """The digest of an adapter model's adapter, which `podium finetune` pushed (never the stack):
    None while it is not there; refused when that version is not a LoRA adapter in GGUF."""
    ref = ModelRef.parse(model.adapter or "")
    digest = {t.tag: t.digest for t in registry.tags(ref.name)}.get(ref.tag or "")
    if digest is None:
        return None
    config = registry.config(ref)
    kind = (config.get("lineage") or {}).get("kind")
    if kind != "lora-adapter" or config.get("format") != model.format:
        raise InvalidInput(
            f"models[{index}].adapter {model.adapter!r} of model {model.name} is a "
            f"{config.get('format')} {kind or 'model'}, not a {model.format} LoRA adapter; name an "
            "adapter that `podium finetune` pushed"
        )
    return digest


def _sync_model(stack: Stack, registry: Registry, index: int, model: Model, push: bool) -> str | None:
    tags = {t.tag: t.digest for t in registry.tags(model.name)}
    digest = tags.get(model.version)
    if not push:
        return digest
    layout = _bundle_layout(stack, model)
    if digest is None and layout is not None:
        # A stack served from a bundle takes its models from the bundle's OCI layouts: the bytes
        # that were vetted and carried in, with the digests they had where the bundle was made.
        digest = registry.push_layout(layout, model.name, model.version)
    elif digest is None:
        digest = registry.push(
            model_source(stack, index, model),
            model.name,
            model.version,
            model.format,
            model.trusted,
            model.trusted_types,
            source=model.source,
        )
    for alias in model.aliases:
        if tags.get(alias) != digest:
            registry.tag(ModelRef(model.name, tag=model.version), alias)
    return digest


def _bundle_layout(stack: Stack, model: Model) -> Path | None:
    folder = stack.bundle_folder
    layout = folder / "models" / model.name / model.version if folder else None
    return layout if layout is not None and (layout / "index.json").is_file() else None


def model_source(stack: Stack, index: int, model: Model) -> Path:
    """The file or folder to push for a model: generated for `tiny:<kind>`, else its path
    (relative paths are relative to the stack folder)."""
    if model.source.startswith(TINY_PREFIX):
        return _tiny(stack, index, model)
    path = Path(model.source).expanduser()
    if not path.is_absolute():
        path = stack.folder / path
    if not path.exists():
        raise InvalidInput(
            f"models[{index}].source {model.source!r} of model {model.name}: {path} does not "
            "exist; give a file or folder relative to the stack folder, or tiny:gguf|gguf-embedding|hf|sklearn|onnx"
        )
    return path


def _tiny(stack: Stack, index: int, model: Model) -> Path:
    from podium.models.tiny import KINDS, make_tiny

    kind = model.source.removeprefix(TINY_PREFIX)
    if kind not in KINDS:
        raise InvalidInput(
            f"models[{index}].source {model.source!r}: no tiny model of kind {kind!r}; "
            f"use one of: {', '.join(TINY_PREFIX + k for k in KINDS)}"
        )
    cache = tiny_cache(stack.name) / f"{model.name}-{model.version}"
    if kind in ("gguf", "gguf-embedding"):
        to_push = written = cache / f"{model.name}.gguf"
        target = written
    elif kind in ("sklearn", "onnx"):
        # The writer puts a JSON sidecar beside the .skops (.onnx) file: the folder holds both.
        target = cache / f"{model.name}.{'skops' if kind == 'sklearn' else 'onnx'}"
        written, to_push = target.with_suffix(".json"), cache
    else:
        # A transformers folder (config, tokenizer, safetensors) pushed as a whole.
        to_push = target = cache / "model"
        written = target / "config.json"
    if not written.exists():
        make_tiny(kind, target, seed=TINY_SEED)  # type: ignore[arg-type]  # checked above
    return to_push


def tiny_cache(stack: str) -> Path:
    """Generated tiny models of a stack, kept on the control machine beside its secrets."""
    return StackSecrets(stack).path("models")
