"""GPU placement: replicas on a node never share a GPU, and `device: auto` means the same device
in validation, the plan, the role's wheels and the unit's GPU list."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from roles.engine_vllm.tasks import requirements

from podium import engine_files
from podium.errors import InvalidInput
from podium.files import files_for
from podium.plan.actions import make_plan
from podium.stack import load_stack
from podium.stack.versions import load_versions

DIGESTS = {"small-hf:1": "sha256:" + "3" * 64, "tiny-llama:1": "sha256:" + "1" * 64}


def _stack(tmp_path: Path, engines: list[dict[str, Any]], gpus: int = 2) -> Any:
    data = {
        "name": "gpuplace",
        "nodes": [
            {"name": "ctrl", "address": "192.0.2.10"},
            {"name": "gpu1", "address": "192.0.2.12", "gpus": gpus},
        ],
        "network": {"admin_sources": ["192.0.2.0/28"]},
        "registry": {"node": "ctrl", "port": 5000},
        "models": [
            {"name": "small-hf", "version": "1", "format": "safetensors", "source": "tiny:hf"},
            {"name": "tiny-llama", "version": "1", "format": "gguf", "source": "tiny:gguf"},
        ],
        "engines": engines,
    }
    folder = tmp_path / "gpuplace"
    folder.mkdir(exist_ok=True)
    (folder / "stack.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
    return load_stack(str(folder))


def _replicas(stack: Any) -> dict[tuple[str, int], dict[str, Any]]:
    out = {}
    for action in make_plan(stack, load_versions(), {}, DIGESTS):
        if action.component.startswith("engine-") and action.host == "gpu1":
            for rep in action.settings["replicas"]:
                out[(rep["engine"], rep["replica"])] = rep
    return out


def test_two_replicas_of_two_gpus_on_a_two_gpu_node_are_refused(tmp_path: Path) -> None:
    engine = {"name": "big", "kind": "vllm", "model": "small-hf:1", "nodes": ["gpu1"],
              "replicas": 2, "gpus_per_replica": 2}
    with pytest.raises(InvalidInput) as caught:
        _stack(tmp_path, [engine])
    message = str(caught.value)
    assert len(message.splitlines()) == 1, message
    assert "engines[0].replicas = 2" in message
    assert "4 GPUs on node gpu1 (big 4), which has 2" in message


def test_engines_sharing_a_node_are_refused_past_its_gpus_and_named(tmp_path: Path) -> None:
    engines = [
        {"name": "one", "kind": "vllm", "model": "small-hf:1", "nodes": ["gpu1"]},
        {"name": "two", "kind": "sglang", "model": "small-hf:1", "nodes": ["gpu1"], "port": 30000,
         "gpus_per_replica": 2},
    ]
    with pytest.raises(InvalidInput) as caught:
        _stack(tmp_path, engines)
    assert "3 GPUs on node gpu1 (one 1, two 2), which has 2" in str(caught.value)
    # The same engines fit a node with three GPUs, each replica on GPUs of its own.
    reps = _replicas(_stack(tmp_path, engines, gpus=3))
    assert reps[("one", 0)]["gpu_ids"] == [0]
    assert reps[("two", 0)]["gpu_ids"] == [1, 2]


def test_auto_vllm_on_a_gpu_node_gets_the_cuda_build_and_a_gpu(tmp_path: Path) -> None:
    engine = {"name": "auto", "kind": "vllm", "model": "small-hf:1", "nodes": ["gpu1"]}
    rep = _replicas(_stack(tmp_path, [engine]))[("auto", 0)]
    assert rep["device"] == "gpu" and rep["gpus"] == 1 and rep["gpu_ids"] == [0]
    assert engine_files.device(rep) == "gpu"
    pins = requirements(engine_files.device(rep))
    assert pins == list(load_versions().extra("engine-vllm")["requirements"])
    assert any(pin.startswith("vllm==") for pin in pins) and not any("cpu" in pin for pin in pins)
    unit = files_for("engine-vllm", "gpu1", {"replicas": [rep], "registry": None})
    text = "\n".join(unit.values())
    assert "CUDA_VISIBLE_DEVICES=0" in text, text


def test_cpu_engines_get_no_gpu_even_on_a_gpu_node(tmp_path: Path) -> None:
    engines = [
        {"name": "cpu-vllm", "kind": "vllm", "model": "small-hf:1", "nodes": ["gpu1"],
         "device": "cpu"},
        {"name": "llama", "kind": "llamacpp", "model": "tiny-llama:1", "nodes": ["gpu1"],
         "port": 8200},
    ]
    reps = _replicas(_stack(tmp_path, engines, gpus=1))
    for key in (("cpu-vllm", 0), ("llama", 0)):
        assert reps[key]["device"] == "cpu" and reps[key]["gpus"] == 0 and reps[key]["gpu_ids"] == []
