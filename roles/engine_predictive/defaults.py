"""Defaults of role engine-predictive; the plan's settings arrive as host data `podium_engine_predictive`."""

DEFAULTS = {
    "engine_predictive_packages": [],
    # Seconds a (re)started replica has to report its model ready before the deploy fails.
    "engine_predictive_ready_timeout_s": 180,
}
