"""The files the engine roles write, rendered from a stack: one unit per replica with the right
command, environment and ports, MLServer's settings, and `systemd-analyze verify` on every unit."""

from __future__ import annotations

import json
import shlex
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from podium import engine_files
from podium.files import files_for
from podium.plan.actions import make_plan
from podium.plan.state import HostState
from podium.stack import load_stack
from podium.stack.versions import load_versions

UNITS = "etc/systemd/system"
DIGESTS = {
    "tiny-llama:stable": "sha256:" + "1" * 64,
    "iris:1": "sha256:" + "2" * 64,
    "small-hf:1": "sha256:" + "3" * 64,
}

STACK: dict[str, Any] = {
    "name": "rendereng",
    "nodes": [
        {"name": "ctrl", "address": "192.0.2.10"},
        {"name": "cpu1", "address": "192.0.2.11"},
        {"name": "gpu1", "address": "192.0.2.12", "gpus": 8},
    ],
    "network": {"admin_sources": ["192.0.2.0/28"]},
    "registry": {"node": "ctrl", "port": 5000},
    "models": [
        {"name": "tiny-llama", "version": "1", "format": "gguf", "source": "tiny:gguf",
         "aliases": ["stable"]},
        {"name": "iris", "version": "1", "format": "skops", "source": "tiny:sklearn",
         "trusted_types": ["numpy.dtype"]},
        {"name": "small-hf", "version": "1", "format": "safetensors", "source": "tiny:hf"},
    ],
    "engines": [
        {"name": "llama", "kind": "llamacpp", "model": "tiny-llama:stable", "nodes": ["cpu1"],
         "replicas": 2, "port": 8080, "args": {"ctx-size": 512, "threads": 1, "parallel": 2}},
        {"name": "iris-mls", "kind": "predictive", "model": "iris:1", "nodes": ["cpu1"],
         "replicas": 2, "port": 8090},
        {"name": "hf-vllm", "kind": "vllm", "model": "small-hf:1", "nodes": ["gpu1"], "port": 8000,
         "gpus_per_replica": 2, "replicas": 2,
         "args": {"max-model-len": 4096, "gpu-memory-utilization": 0.85, "enforce-eager": True}},
        {"name": "hf-vllm-cpu", "kind": "vllm", "model": "small-hf:1", "nodes": ["cpu1"],
         "port": 8100, "device": "cpu", "args": {"max-model-len": 1024}},
        {"name": "hf-sglang", "kind": "sglang", "model": "small-hf:1", "nodes": ["gpu1"],
         "port": 30000, "gpus_per_replica": 4, "args": {"context-length": 8192}},
    ],
}


def _stack(tmp_path: Path, data: dict[str, Any]) -> Any:
    folder = tmp_path / data["name"]
    folder.mkdir(exist_ok=True)
    (folder / "stack.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
    return load_stack(str(folder))


def _rendered(tmp_path: Path, data: dict[str, Any] = STACK) -> dict[tuple[str, str], dict[str, str]]:
    """(component, host) → rendered files, with the model digests `podium up` resolves."""
    stack = _stack(tmp_path, data)
    return {
        (a.component, a.host): files_for(a.component, a.host, a.settings)
        for a in make_plan(stack, load_versions(), {}, DIGESTS)
        if a.component.startswith("engine-")
    }


def _exec(unit: str) -> list[str]:
    line = next(x for x in unit.splitlines() if x.startswith("ExecStart="))
    return shlex.split(line.removeprefix("ExecStart="))


def _env(unit: str) -> dict[str, str]:
    pairs = [shlex.split(x.removeprefix("Environment="))[0] for x in unit.splitlines()
             if x.startswith("Environment=")]
    return dict(p.split("=", 1) for p in pairs)


def _flag(argv: list[str], name: str) -> str:
    return argv[argv.index(name) + 1]


def test_one_unit_per_replica_with_its_own_port(tmp_path: Path) -> None:
    files = _rendered(tmp_path)
    units = {path: text for fs in files.values() for path, text in fs.items() if path.endswith(".service")}
    assert sorted(Path(p).name for p in units) == [
        "podium-llamacpp-llama-0.service", "podium-llamacpp-llama-1.service",
        "podium-predictive-iris-mls-0.service", "podium-predictive-iris-mls-1.service",
        "podium-sglang-hf-sglang-0.service",
        "podium-vllm-hf-vllm-0.service", "podium-vllm-hf-vllm-1.service",
        "podium-vllm-hf-vllm-cpu-0.service",
    ]
    assert all(p.startswith("etc/systemd/system/") for p in units)
    llama = files[("engine-llamacpp", "cpu1")]
    ports = [_flag(_exec(t), "--port") for p, t in sorted(llama.items())]
    assert ports == ["8080", "8081"]


def test_llamacpp_unit_serves_the_pulled_gguf_under_the_model_name(tmp_path: Path) -> None:
    unit = _rendered(tmp_path)[("engine-llamacpp", "cpu1")][
        "etc/systemd/system/podium-llamacpp-llama-0.service"]
    argv = _exec(unit)
    assert argv[0] == "/opt/podium/llamacpp/bin/llama-server"
    assert _flag(argv, "--model") == f"/var/lib/podium/models/{DIGESTS['tiny-llama:stable']}.gguf"
    assert _flag(argv, "--alias") == "tiny-llama"
    assert _flag(argv, "--host") == "0.0.0.0"
    assert "--metrics" in argv
    flags = (_flag(argv, "--threads"), _flag(argv, "--ctx-size"), _flag(argv, "--parallel"))
    assert flags == ("1", "512", "2")
    assert "User=podium-engine" in unit
    assert "StateDirectory=podium/engines/llama-0" in unit


def test_predictive_settings_serve_in_process_on_the_replicas_ports(tmp_path: Path) -> None:
    files = _rendered(tmp_path)[("engine-predictive", "cpu1")]
    settings = json.loads(files["etc/podium/engines/iris-mls-1/settings.json"])
    assert settings["parallel_workers"] == 0
    # The second replica on a node takes the next three ports: http, grpc, metrics.
    assert (settings["http_port"], settings["grpc_port"], settings["metrics_port"]) == (8093, 8094, 8095)
    model = json.loads(files["etc/podium/engines/iris-mls-1/iris/model-settings.json"])
    assert model["implementation"] == "podium.services.mlserver_skops.SkopsModel"
    assert model["parameters"]["uri"] == f"/var/lib/podium/models/{DIGESTS['iris:1']}.skops"
    assert model["parameters"]["extra"] == {"trusted": False, "trusted_types": ["numpy.dtype"]}
    unit = files["etc/systemd/system/podium-predictive-iris-mls-1.service"]
    assert _exec(unit) == ["/opt/podium/mlserver/bin/mlserver", "start", "/etc/podium/engines/iris-mls-1"]
    assert _env(unit)["PYTHONPATH"] == engine_files.RUNTIME_PATH


def test_an_onnx_model_is_served_by_podiums_onnx_runtime_without_trust_settings(tmp_path: Path) -> None:
    data = json.loads(json.dumps(STACK))
    data["models"][1] = {"name": "iris", "version": "1", "format": "onnx", "source": "tiny:onnx"}
    files = _rendered(tmp_path, data)[("engine-predictive", "cpu1")]
    model = json.loads(files["etc/podium/engines/iris-mls-0/iris/model-settings.json"])
    assert model == {"name": "iris", "implementation": "podium.services.mlserver_onnx.OnnxModel",
                     "parameters": {"uri": f"/var/lib/podium/models/{DIGESTS['iris:1']}.onnx"}}
    unit = files["etc/systemd/system/podium-predictive-iris-mls-0.service"]
    assert "Description=Podium MLServer (ONNX) engine iris-mls replica 0 (iris)" in unit
    assert _env(unit)["PYTHONPATH"] == engine_files.RUNTIME_PATH


def test_vllm_units_split_the_gpus_and_keep_telemetry_off(tmp_path: Path) -> None:
    files = _rendered(tmp_path)
    vllm = files[("engine-vllm", "gpu1")]
    first = vllm["etc/systemd/system/podium-vllm-hf-vllm-0.service"]
    second = vllm["etc/systemd/system/podium-vllm-hf-vllm-1.service"]
    argv = _exec(first)
    model = f"/var/lib/podium/models/{DIGESTS['small-hf:1']}"
    assert argv[:3] == ["/opt/podium/vllm/bin/vllm", "serve", model]
    assert _flag(argv, "--served-model-name") == "small-hf"
    assert _flag(argv, "--tensor-parallel-size") == "2"
    assert _flag(argv, "--max-model-len") == "4096"
    assert _flag(argv, "--gpu-memory-utilization") == "0.85"
    assert "--enforce-eager" in argv
    for needed in ("VLLM_NO_USAGE_STATS", "DO_NOT_TRACK", "HF_HUB_OFFLINE"):
        assert _env(first)[needed] == "1"
    sglang = files[("engine-sglang", "gpu1")]["etc/systemd/system/podium-sglang-hf-sglang-0.service"]
    gpus = [_env(u)["CUDA_VISIBLE_DEVICES"] for u in (first, second, sglang)]
    assert gpus == ["0,1", "2,3", "4,5,6,7"], "engines on one node must not share a GPU"


def test_vllm_on_cpu_runs_the_cpu_build_without_gpus(tmp_path: Path) -> None:
    unit = _rendered(tmp_path)[("engine-vllm", "cpu1")][f"{UNITS}/podium-vllm-hf-vllm-cpu-0.service"]
    argv = _exec(unit)
    # vllm-cpu is not the distribution the `vllm` command looks up: the server module runs.
    assert argv[:3] == ["/opt/podium/vllm-cpu/bin/python", "-m", "vllm.entrypoints.openai.api_server"]
    assert _flag(argv, "--model") == f"/var/lib/podium/models/{DIGESTS['small-hf:1']}"
    assert "--tensor-parallel-size" not in argv
    assert "--enforce-eager" in argv and _flag(argv, "--max-model-len") == "1024"
    env = _env(unit)
    assert env["CUDA_VISIBLE_DEVICES"] == ""
    assert env["VLLM_CPU_KVCACHE_SPACE"] == "1"
    state = "/var/lib/podium/engines/hf-vllm-cpu-0"
    for name in ("TORCHINDUCTOR_CACHE_DIR", "VLLM_CACHE_ROOT", "TMPDIR"):
        assert env[name].startswith(state + "/"), f"{name}={env[name]} is outside {state}"
    assert "StateDirectory=podium/engines/hf-vllm-cpu-0/tmp" in unit


def test_vllm_on_cpu_may_ask_for_torch_compile(tmp_path: Path) -> None:
    data = json.loads(json.dumps(STACK))
    engine = next(e for e in data["engines"] if e["name"] == "hf-vllm-cpu")
    engine["args"]["enforce-eager"] = False
    unit = _rendered(tmp_path, data)[("engine-vllm", "cpu1")][
        f"{UNITS}/podium-vllm-hf-vllm-cpu-0.service"]
    assert "--enforce-eager" not in _exec(unit)


def test_sglang_unit(tmp_path: Path) -> None:
    unit = _rendered(tmp_path)[("engine-sglang", "gpu1")][f"{UNITS}/podium-sglang-hf-sglang-0.service"]
    argv = _exec(unit)
    assert argv[:3] == ["/opt/podium/sglang/bin/python", "-m", "sglang.launch_server"]
    assert _flag(argv, "--model-path") == f"/var/lib/podium/models/{DIGESTS['small-hf:1']}"
    assert _flag(argv, "--tp-size") == "4"
    assert _flag(argv, "--context-length") == "8192"
    assert "--enable-metrics" in argv
    assert _env(unit)["HF_HUB_OFFLINE"] == "1"


def test_a_tensor_parallel_arg_in_the_stack_wins_over_the_default(tmp_path: Path) -> None:
    data = json.loads(json.dumps(STACK))
    data["engines"][4]["args"]["tp"] = 4
    unit = _rendered(tmp_path, data)[("engine-sglang", "gpu1")][
        "etc/systemd/system/podium-sglang-hf-sglang-0.service"]
    argv = _exec(unit)
    assert "--tp-size" not in argv and _flag(argv, "--tp") == "4"


def test_changing_one_engines_args_changes_only_its_units(tmp_path: Path) -> None:
    before = _rendered(tmp_path)
    data = json.loads(json.dumps(STACK))
    data["name"] = "rendereng2"
    data["engines"][0]["args"]["threads"] = 2
    after = _rendered(tmp_path, data)
    changed = sorted(
        path for key in before for path in before[key] if before[key][path] != after[key].get(path)
    )
    assert changed == ["etc/systemd/system/podium-llamacpp-llama-0.service",
                       "etc/systemd/system/podium-llamacpp-llama-1.service"]


def test_a_moved_alias_changes_the_engine_config(tmp_path: Path) -> None:
    """A new digest behind the same reference reconfigures the engine (it must pull and restart)."""
    stack = _stack(tmp_path, STACK)
    versions = load_versions()
    first = make_plan(stack, versions, {}, DIGESTS)
    state = {h: HostState(host=h) for h in stack.node_names}
    for action in first:
        assert action.to_version and action.config_hash
        state[action.host].record(action.component, action.to_version, action.config_hash)
    moved = {**DIGESTS, "tiny-llama:stable": "sha256:" + "9" * 64}
    again = {(a.component, a.host): a.action for a in make_plan(stack, versions, state, moved)}
    assert again[("engine-llamacpp", "cpu1")] == "reconfigure"
    assert {k: v for k, v in again.items() if k != ("engine-llamacpp", "cpu1")} == {
        k: "keep" for k in again if k != ("engine-llamacpp", "cpu1")}


@pytest.mark.parametrize(
    ("word", "expected"),
    [("plain", "plain"), ("two words", '"two words"'), ("50%", "50%%"), ("$HOME", "$$HOME"),
     ('say "hi"', '"say \\"hi\\""')],
)
def test_exec_words_survive_systemd_parsing(word: str, expected: str) -> None:
    assert engine_files.systemd_quote(word) == expected


def test_args_become_flags() -> None:
    words = engine_files.arg_words({"b": True, "a": 1, "c": False, "d": "x y"})
    assert words == ["--a", "1", "--b", "--d", "x y"]


def _systemd_root(tmp_path: Path, units: dict[str, str]) -> Path:
    """A root holding systemd's own units, the rendered ones and stubs for every binary they run."""
    root = tmp_path / "root"
    shutil.copytree("/usr/lib/systemd/system", root / "usr/lib/systemd/system", symlinks=True)
    for path, text in units.items():
        dest = root / path
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_text(text)
        binary = root / _exec(text)[0].lstrip("/")
        binary.parent.mkdir(parents=True, exist_ok=True)
        binary.write_text("#!/bin/sh\n")
        binary.chmod(0o755)
    return root


def test_every_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    if not shutil.which("systemd-analyze") or not Path("/usr/lib/systemd/system").is_dir():
        pytest.skip("systemd-analyze is not installed (apt-get install systemd)")
    units = {p: t for fs in _rendered(tmp_path).values() for p, t in fs.items() if p.endswith(".service")}
    root = _systemd_root(tmp_path, units)
    names = [Path(p).name for p in units]
    done = subprocess.run(["systemd-analyze", "verify", f"--root={root}", *names],
                          capture_output=True, text=True, timeout=60)
    # Warnings (an unknown key, a bad value) go to stderr with exit status 0: both must be clean.
    assert done.returncode == 0 and not done.stderr.strip(), done.stderr


def test_systemd_analyze_verify_catches_a_broken_unit(tmp_path: Path) -> None:
    """The check above can fail: a unit with an unknown key is reported."""
    if not shutil.which("systemd-analyze") or not Path("/usr/lib/systemd/system").is_dir():
        pytest.skip("systemd-analyze is not installed (apt-get install systemd)")
    units = {p: t for fs in _rendered(tmp_path).values() for p, t in fs.items() if p.endswith(".service")}
    path, text = next(iter(units.items()))
    root = _systemd_root(tmp_path, {path: text.replace("[Service]", "[Service]\nRestartt=always")})
    done = subprocess.run(["systemd-analyze", "verify", f"--root={root}", Path(path).name],
                          capture_output=True, text=True, timeout=60)
    assert "Restartt" in done.stderr
