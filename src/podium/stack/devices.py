"""Where an engine runs: the device and GPU count of each replica, decided once for validation,
placement, the roles and the cluster alike, so `auto` cannot mean GPU in one and CPU in another."""

from __future__ import annotations

from collections.abc import Iterable

from podium.stack.ports import replicas
from podium.stack.sections import Engine

# Engines whose `auto` means a GPU: vLLM's and SGLang's CUDA builds are what a user of them
# expects; a CPU vLLM is asked for by name (device: cpu).
GPU_FIRST = ("vllm", "sglang")


def uses_gpu(engine: Engine) -> bool:
    return (
        engine.device == "gpu"
        or engine.gpus_per_replica > 0
        or (engine.device == "auto" and engine.kind in GPU_FIRST)
    )


def device(engine: Engine) -> str:
    """gpu or cpu: never `auto` past this point."""
    return "gpu" if uses_gpu(engine) else "cpu"


def gpu_count(engine: Engine) -> int:
    """GPUs one replica holds: a GPU engine that names no count holds one."""
    return max(engine.gpus_per_replica, 1) if uses_gpu(engine) else 0


def gpus_wanted(engines: Iterable[Engine], node: str) -> dict[str, int]:
    """Engine name → GPUs its replicas on `node` hold together."""
    out: dict[str, int] = {}
    for engine in engines:
        count = sum(gpu_count(engine) for rep in replicas(engine) if rep.node == node)
        if count:
            out[engine.name] = count
    return out
