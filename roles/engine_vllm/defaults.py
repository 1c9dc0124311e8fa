"""Defaults of role engine-vllm; the plan's settings arrive as host data `podium_engine_vllm`."""

DEFAULTS = {
    # vLLM compiles kernels with the system compiler on first start (Triton, torch.compile);
    # the CPU build binds its threads with libnuma.
    "engine_vllm_packages": ["gcc", "g++", "python3-dev", "libnuma1"],
    # Loading weights and capturing CUDA graphs takes minutes on large models.
    "engine_vllm_ready_timeout_s": 900,
    # The CPU build in eager mode answers in about 40 s on two cores (three Python processes
    # import torch); a node busy with other engines, or a larger model, takes a few times that.
    "engine_vllm_cpu_ready_timeout_s": 300,
}
