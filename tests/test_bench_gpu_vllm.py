"""bench/gpu_check.sh starts vLLM on a GPU with exactly what the engine-vllm role's unit runs.

The GPU itself is not here: this checks, on CPU, that the check's launcher is the role's unit
(command and environment) with only the venv, the model folder and the address swapped.
"""

from __future__ import annotations

import shlex
import subprocess
import sys

from podium import engine_files
from podium.render import REPO

sys.path.insert(0, str(REPO / "bench"))
import gpu_vllm  # noqa: E402


def unit_lines(prefix: str) -> list[str]:
    replica = {**gpu_vllm.REPLICA, "port": 18081}
    unit = engine_files.build_vllm("gpu1", {"replicas": [replica]})
    text = unit[f"{engine_files.UNIT_DIR}/{engine_files.unit_name('vllm', replica)}"]
    return [x.removeprefix(prefix) for x in text.splitlines() if x.startswith(prefix)]


def test_the_gpu_checks_vllm_launcher_is_the_roles_unit_with_its_paths_swapped() -> None:
    words = shlex.split(gpu_vllm.launcher("/w/venv", "/w/tiny-hf", 18081))
    assert words[:2] == ["exec", "env"]
    assigned = [w for w in words[2:] if "=" in w and not w.startswith("-")]
    command = words[2 + len(assigned):]
    environment = dict(w.split("=", 1) for w in assigned)

    unit_command = shlex.split(unit_lines("ExecStart=")[0])
    swapped = {"/opt/podium/vllm/bin/vllm": "/w/venv/bin/vllm", "0.0.0.0": "127.0.0.1",
               engine_files.model_dir({**gpu_vllm.REPLICA}): "/w/tiny-hf"}
    assert command == [swapped.get(w, w) for w in unit_command]
    assert command[:2] == ["/w/venv/bin/vllm", "serve"] and "--gpu-memory-utilization" in command

    unit_environment = dict(shlex.split(x)[0].split("=", 1) for x in unit_lines("Environment="))
    # HOME is the unit's state folder on a node; the check runs in its own user's home.
    assert unit_environment.pop("HOME") == engine_files.engine_state({**gpu_vllm.REPLICA})
    assert environment == unit_environment
    assert environment["CUDA_VISIBLE_DEVICES"] == "0"
    assert set(engine_files.QUIET_ENV.items()) <= set(environment.items())


def test_the_gpu_check_script_parses_and_reports_vllm_not_run_without_a_wheelhouse() -> None:
    assert subprocess.run(["bash", "-n", str(REPO / "bench" / "gpu_check.sh")]).returncode == 0
    script = (REPO / "bench" / "gpu_check.sh").read_text()
    assert 'note "vLLM: not run (no VLLM_WHEELHOUSE' in script
    assert '"$PY" bench/gpu_vllm.py "$VENV" "$HF" "$VLLM_PORT"' in script
