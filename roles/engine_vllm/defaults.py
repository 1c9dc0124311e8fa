"""Defaults of role engine-vllm; the plan's settings arrive as host data `podium_engine_vllm`."""

DEFAULTS = {
    # vLLM compiles kernels with the system compiler on first start (Triton, torch.compile).
    "engine_vllm_packages": ["gcc", "g++", "python3-dev", "libnuma1"],
    # Loading weights and capturing CUDA graphs takes minutes on large models.
    "engine_vllm_ready_timeout_s": 900,
}
