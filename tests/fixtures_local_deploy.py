"""Run a small deploy function on this machine through pyinfra's local connector, as podium up
runs a role on a node: its changes counted the same way, and each failed host's first error."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

from pyinfra.api.deploy import add_deploy
from pyinfra.api.exceptions import PyinfraError
from pyinfra.api.operations import run_ops
from pyinfra.api.state import StateStage

from podium.drivers.pyinfra_runner import _all_succeeded, _did_change, _first_error, connected


def run_locally(deploy: Callable[..., Any], *args: Any) -> tuple[int, str | None]:
    """(changes, first error or None) of one run of `deploy(*args)` on @local."""
    with connected([("@local", {})], diff=False) as state:
        state.set_stage(StateStage.Prepare)
        add_deploy(state, deploy, *args)
        state.set_stage(StateStage.Execute)
        with contextlib.suppress(PyinfraError):
            run_ops(state)
        host = state.inventory.get_host("@local")
        error = None if _all_succeeded(state, host) else _first_error(state, host)
        return _did_change(state), error
