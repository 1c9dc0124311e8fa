"""Adapter models in a stack: the rules that refuse a bad one, and the engine units that serve one
(llama.cpp with `--lora` over its base's GGUF, vLLM with `--enable-lora`), from a plan with digests."""

from __future__ import annotations

import copy
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from podium.errors import InvalidInput
from podium.files import files_for
from podium.plan.actions import make_plan
from podium.stack import load_stack
from podium.stack.versions import load_versions

BASE_DIGEST = "sha256:" + "1" * 64
ADAPTER_DIGEST = "sha256:" + "a" * 64
HF_DIGEST = "sha256:" + "3" * 64
HF_ADAPTER_DIGEST = "sha256:" + "b" * 64
# What `podium up` resolves: the adapter model's engine ref stands for its base's weights, and
# the adapter's own ref for the adapter.
DIGESTS = {"tiny-helper:2": BASE_DIGEST, "helper:2": ADAPTER_DIGEST, "tiny-llama:1": BASE_DIGEST,
           "hf-helper:1": HF_DIGEST, "hf-lora:1": HF_ADAPTER_DIGEST}
MODELS = "/var/lib/podium/models"

STACK: dict[str, Any] = {
    "name": "adapterstack",
    "nodes": [
        {"name": "ctrl", "address": "192.0.2.10"},
        {"name": "cpu1", "address": "192.0.2.11"},
        {"name": "gpu1", "address": "192.0.2.12", "gpus": 1},
    ],
    "network": {"admin_sources": ["192.0.2.0/28"]},
    "registry": {"node": "ctrl", "port": 5000},
    "models": [
        {"name": "tiny-llama", "version": "1", "format": "gguf", "source": "tiny:gguf"},
        {"name": "tiny-helper", "base": "tiny-llama:1", "adapter": "helper:2"},
        {"name": "small-hf", "version": "1", "format": "safetensors", "source": "tiny:hf"},
        {"name": "hf-helper", "base": "small-hf:1", "adapter": "hf-lora:1", "format": "safetensors"},
    ],
    "engines": [
        {"name": "llama", "kind": "llamacpp", "model": "tiny-llama:1", "nodes": ["cpu1"]},
        {"name": "helper", "kind": "llamacpp", "model": "tiny-helper:2", "nodes": ["cpu1"], "port": 8180,
         "args": {"ctx-size": 512}},
        {"name": "hf-vllm", "kind": "vllm", "model": "hf-helper:1", "nodes": ["gpu1"], "port": 8000,
         "gpus_per_replica": 1},
    ],
    "gateway": {"nodes": ["ctrl"], "keys": [{"name": "helpers", "models": ["tiny-helper"]}]},
}


def _write(tmp_path: Path, data: dict[str, Any]) -> Path:
    folder = tmp_path / data["name"]
    folder.mkdir(exist_ok=True)
    path = folder / "stack.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def _units(tmp_path: Path, data: dict[str, Any] = STACK) -> dict[str, list[str]]:
    """Unit file name → ExecStart words, over every engine host of the plan."""
    stack = load_stack(str(_write(tmp_path, data).parent))
    out = {}
    for a in make_plan(stack, load_versions(), {}, DIGESTS):
        if a.component.startswith("engine-"):
            for path, text in files_for(a.component, a.host, a.settings).items():
                line = next((x for x in text.splitlines() if x.startswith("ExecStart=")), None)
                if line:
                    out[Path(path).name] = shlex.split(line.removeprefix("ExecStart="))
    return out


def _flag(argv: list[str], name: str) -> str:
    return argv[argv.index(name) + 1]


def test_an_adapter_model_takes_its_version_from_the_adapter(tmp_path: Path) -> None:
    stack = load_stack(str(_write(tmp_path, STACK).parent))
    model = stack.model("tiny-helper:2")
    assert (model.version, model.format, model.base, model.adapter) == ("2", "gguf", "tiny-llama:1", "helper:2")


def test_llamacpp_serves_the_adapter_over_its_bases_gguf_under_its_own_name(tmp_path: Path) -> None:
    argv = _units(tmp_path)["podium-llamacpp-helper-0.service"]
    assert _flag(argv, "--model") == f"{MODELS}/{BASE_DIGEST}.gguf"
    assert _flag(argv, "--lora") == f"{MODELS}/{ADAPTER_DIGEST}.gguf"
    assert _flag(argv, "--alias") == "tiny-helper"
    assert _flag(argv, "--ctx-size") == "512"


def test_a_plain_model_gets_no_lora(tmp_path: Path) -> None:
    argv = _units(tmp_path)["podium-llamacpp-llama-0.service"]
    assert "--lora" not in argv and _flag(argv, "--alias") == "tiny-llama"


def test_vllm_enables_lora_and_names_the_module_after_the_adapter_model(tmp_path: Path) -> None:
    argv = _units(tmp_path)["podium-vllm-hf-vllm-0.service"]
    assert argv[1:3] == ["serve", f"{MODELS}/{HF_DIGEST}"]
    assert "--enable-lora" in argv
    assert _flag(argv, "--lora-modules") == f"hf-helper={MODELS}/{HF_ADAPTER_DIGEST}"
    # The base answers to its own name; the adapter model's name selects the LoRA.
    assert _flag(argv, "--served-model-name") == "small-hf"


def test_the_plan_pulls_base_and_adapter_by_digest(tmp_path: Path) -> None:
    stack = load_stack(str(_write(tmp_path, STACK).parent))
    action = next(a for a in make_plan(stack, load_versions(), {}, DIGESTS)
                  if a.component == "engine-llamacpp")
    replica = next(r for r in action.settings["replicas"] if r["engine"] == "helper")
    assert (replica["model"], replica["base_model"], replica["model_version"]) == ("tiny-helper", "tiny-llama", "1")
    assert replica["model_digest"] == BASE_DIGEST
    assert replica["adapter"]["model"] == "helper" and replica["adapter"]["model_digest"] == ADAPTER_DIGEST


def test_a_new_adapter_version_changes_only_the_adapter_engines_config(tmp_path: Path) -> None:
    stack = load_stack(str(_write(tmp_path, STACK).parent))
    before = {(a.host, a.component): a.config_hash for a in make_plan(stack, load_versions(), {}, DIGESTS)}
    moved = {**DIGESTS, "helper:2": "sha256:" + "c" * 64}
    after = {(a.host, a.component): a.config_hash for a in make_plan(stack, load_versions(), {}, moved)}
    assert [k for k in before if before[k] != after[k]] == [("cpu1", "engine-llamacpp")]


BAD = [
    ("unknown base", lambda d: d["models"][1].update(base="tiny-llama:9"),
     "models[1].base = 'tiny-llama:9': is not a model version or alias in models; declared: tiny-llama:1"),
    ("base without adapter", lambda d: d["models"][1].pop("adapter") and d["models"][1].update(
        version="2", format="gguf", source="tiny:gguf"),
     "models[1].base = 'tiny-llama:1': needs adapter as well"),
    ("adapter over an adapter", lambda d: d["models"][3].update(base="tiny-helper:2"),
     "models[3].base = 'tiny-helper:2': is itself an adapter model"),
    ("engine that cannot serve adapters", lambda d: d["engines"][1].update(kind="predictive"),
     "engines[1].kind = 'predictive': cannot serve adapter model tiny-helper; serve it with kind llamacpp or vllm"),
    ("adapter engine on kubernetes", lambda d: d.update(kubernetes={"server": "ctrl", "engines": ["helper"]}),
     "kubernetes.engines[0] = 'helper': serves adapter model tiny-helper, which runs as a systemd unit only"),
    ("a second lora in the args", lambda d: d["engines"][1]["args"].update(lora="/tmp/other.gguf"),
     "engines[1].args.lora = '/tmp/other.gguf': is set by Podium for adapter model tiny-helper"),
    ("llama.cpp over a safetensors base", lambda d: d["models"][1].update(base="small-hf:1"),
     "engines[1].model = 'tiny-helper:2': is an adapter over small-hf:1, which is safetensors, but llamacpp "
     "serves adapters over gguf bases only"),
    ("llama.cpp with a safetensors adapter", lambda d: d["models"][1].update(format="safetensors"),
     "engines[1].model = 'tiny-helper:2': is a safetensors adapter, but llamacpp loads gguf adapters only"),
]


@pytest.mark.parametrize(("change", "message"), [(b[1], b[2]) for b in BAD], ids=[b[0] for b in BAD])
def test_a_bad_adapter_model_is_refused_in_one_sentence(tmp_path: Path, change: Any, message: str) -> None:
    data = copy.deepcopy(STACK)
    change(data)
    path = _write(tmp_path, data)
    with pytest.raises(InvalidInput) as caught:
        load_stack(str(path.parent))
    text = str(caught.value)
    assert len(text.splitlines()) == 1 and message in text, text
    result = subprocess.run([sys.executable, "-m", "podium", "validate", str(path)],
                            capture_output=True, text=True, check=False)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr


def test_the_gateway_routes_the_adapter_models_name_to_its_own_engine(tmp_path: Path) -> None:
    stack = load_stack(str(_write(tmp_path, STACK).parent))
    gateway = next(a for a in make_plan(stack, load_versions(), {}, DIGESTS) if a.component == "gateway")
    models = gateway.settings["models"]
    assert models["tiny-helper"]["replicas"] == ["http://192.0.2.11:8180"]
    assert models["tiny-llama"]["replicas"] == ["http://192.0.2.11:8080"]


def test_a_release_keeps_the_adapters_digest_beside_its_bases(tmp_path: Path) -> None:
    """Pruning keeps what a kept release serves: the adapter's file must count as served."""
    from podium.plan.state import HostState
    from podium.releases.record import host_components

    stack = load_stack(str(_write(tmp_path, STACK).parent))
    actions = make_plan(stack, load_versions(), {}, DIGESTS)
    states = {"cpu1": HostState(host="cpu1")}
    for a in actions:
        if a.host == "cpu1":
            states["cpu1"].record(a.component, a.to_version or "", a.config_hash or "")
    served = host_components(states, actions)["cpu1"]["engine-llamacpp"].model_digests
    assert served == sorted([BASE_DIGEST, ADAPTER_DIGEST])


def test_a_bundle_carries_the_base_but_not_the_adapter_made_on_the_appliance(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from podium.bundle.models import write_models

    monkeypatch.setenv("PODIUM_STATE_DIR", str(tmp_path / "state"))
    data = {**STACK, "models": STACK["models"][:2], "engines": STACK["engines"][:2]}
    stack = load_stack(str(_write(tmp_path, data).parent))
    assert len(write_models(stack, tmp_path / "models")) == 1
    assert sorted(p.name for p in (tmp_path / "models").iterdir()) == ["tiny-llama"]
