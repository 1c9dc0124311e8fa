"""Shared fixtures: each area of the appliance keeps its own in tests/fixtures_<area>.py."""

pytest_plugins = [
    "tests.fixtures_lab",
    "tests.fixtures_engines",
    "tests.fixtures_registry",
    "tests.fixtures_monitoring",
    "tests.fixtures_gateway",
    "tests.fixtures_cluster",
]
