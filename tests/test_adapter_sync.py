"""Adapter models against a real registry: `podium up` finds the adapter `podium finetune`
pushed and plans its pull beside the base's, `podium plan` names both, and an adapter that is
missing or is no LoRA is refused in one sentence before anything is laid down."""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest

from podium.errors import InvalidInput
from podium.files import files_for
from podium.finetune.publish import lineage, push_adapter
from podium.plan.actions import make_plan
from podium.plan.state import ComponentState, HostState
from podium.registry import ModelRef
from podium.registry.access import push_credential, stack_registry
from podium.registry.sync import sync_models
from podium.stack.versions import load_versions
from podium.up import NOT_PUSHED, _model_digests
from tests.test_registry_sync import STACK, Front, _engine, _stack, env, front

__all__ = ["env", "front"]

BASE = {"name": "base-llama", "version": "1", "format": "gguf", "source": "tiny:gguf"}


def _adapter_file(folder: Path) -> Path:
    path = folder / "helper.gguf"
    path.write_bytes(b"GGUF" + bytes(64))
    return path


def test_up_pulls_base_and_adapter_and_the_unit_loads_both(env: Front) -> None:
    models = [BASE, {"name": "base-helper", "base": "base-llama:1", "adapter": "helper:2"}]
    stack = _stack(env, "adapt", models, [_engine("helper", "base-helper:2")])
    with pytest.raises(InvalidInput, match=r"models\[1\]\.adapter 'helper:2' of model base-helper is not "
                                           r"in the registry; train it first with `podium finetune"):
        sync_models(stack, push=True)
    registry = stack_registry(stack, push_credential(STACK))
    base_digest = registry.tags("base-llama")[0].digest
    recorded = lineage(ModelRef("base-llama", tag="1"), base_digest, "chat", "sha256:" + "d" * 64,
                       {"epochs": 1}, "trainer 1.0.0")
    adapter_digest = push_adapter(registry, _adapter_file(env.folder), "helper", "2", recorded)

    digests = sync_models(stack, push=True)
    assert digests == {"base-helper:2": base_digest, "helper:2": adapter_digest}
    action = next(a for a in make_plan(stack, load_versions(), {}, digests) if a.component == "engine-llamacpp")
    unit = files_for(action.component, action.host, action.settings)[
        "etc/systemd/system/podium-llamacpp-helper-0.service"]
    argv = shlex.split(next(x for x in unit.splitlines() if x.startswith("ExecStart=")).removeprefix("ExecStart="))
    assert argv[argv.index("--model") + 1] == f"/var/lib/podium/models/{base_digest}.gguf"
    assert argv[argv.index("--lora") + 1] == f"/var/lib/podium/models/{adapter_digest}.gguf"
    assert argv[argv.index("--alias") + 1] == "base-helper"

    # `podium plan` reads the registry only, and names the adapter's digest too.
    states = {"reg": HostState(host="reg", components={"registry": ComponentState(version="1", config_hash="x")})}
    assert _model_digests(stack, states, push=False, dry_run=True) == digests
    later = _stack(env, "adapt-later", [models[0], {**models[1], "adapter": "helper:3"}],
                   [_engine("helper", "base-helper:3")])
    assert _model_digests(later, states, push=False, dry_run=True) == {
        "base-helper:3": base_digest, "helper:3": NOT_PUSHED}


def test_a_model_that_is_no_lora_adapter_is_refused(env: Front) -> None:
    models = [BASE, {"name": "plain-helper", "base": "base-llama:1", "adapter": "plain:1"}]
    stack = _stack(env, "plain", models, [_engine("helper", "plain-helper:1")])
    registry = stack_registry(stack, push_credential(STACK))
    registry.push(_adapter_file(env.folder), "plain", "1", fmt="gguf")
    with pytest.raises(InvalidInput, match=r"models\[1\]\.adapter 'plain:1' of model plain-helper is a gguf "
                                           r"model, not a gguf LoRA adapter"):
        sync_models(stack, push=True)
