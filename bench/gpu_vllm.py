"""The launcher bench/gpu_check.sh runs for vLLM on a GPU: the engine-vllm role's own command
and environment for one GPU replica, with the venv, model folder and address of the check.

    python bench/gpu_vllm.py VENV MODEL_DIR PORT > launch.sh
"""

from __future__ import annotations

import shlex
import sys
from typing import Any

from podium import engine_files

# One GPU replica as the stack would plan it; a small context and a third of the GPU's memory
# leave room for the llama-server of the same check.
REPLICA: dict[str, Any] = {
    "engine": "gpu-check", "replica": 0, "model": "tiny-hf", "device": "gpu", "gpus": 1,
    "gpu_ids": [0], "model_digest": "gpu-check", "model_version": "1", "model_format": "hf",
    "args": {"max-model-len": 1024, "gpu-memory-utilization": 0.3},
}


def launcher(venv: str, model: str, port: int) -> str:
    """A shell script that execs the replica's command with its unit's environment."""
    replica = {**REPLICA, "port": port}
    words, env = engine_files.launch("vllm", replica)
    link = engine_files.VENV_LINK.format(name=engine_files.venv_name("vllm", replica))
    here = {engine_files.model_dir(replica): model, "0.0.0.0": "127.0.0.1"}
    words = [venv + w[len(link):] if w.startswith(link + "/") else here.get(w, w) for w in words]
    assigned = [f"{k}={shlex.quote(v)}" for k, v in env.items()]
    return f"exec env {' '.join(assigned)} {shlex.join(words)}\n"


if __name__ == "__main__":
    sys.stdout.write(launcher(sys.argv[1], sys.argv[2], int(sys.argv[3])))
