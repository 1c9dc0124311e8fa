"""Defaults of role engine-sglang; the plan's settings arrive as host data `podium_engine_sglang`."""

DEFAULTS = {
    # SGLang JIT-compiles kernels (FlashInfer, Triton) with the system compiler on first start.
    "engine_sglang_packages": ["gcc", "g++", "python3-dev", "libnuma1"],
    "engine_sglang_ready_timeout_s": 900,
}
