"""Defaults of role engine-llamacpp; the plan's settings arrive as host data `podium_engine_llamacpp`."""

DEFAULTS = {
    # libgomp1: llama-server's OpenMP runtime, which the wheel does not bundle.
    "engine_llamacpp_packages": ["libgomp1"],
    # Seconds a (re)started replica has to answer /health before the deploy fails.
    "engine_llamacpp_ready_timeout_s": 120,
}
