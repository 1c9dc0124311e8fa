"""roles/checks.py on this machine through pyinfra's local connector: a passing check changes
nothing, a failing one fails naming what it expected and what the node said, and the one-command
account fact agrees with the node's accounts."""

from __future__ import annotations

import pwd
import shutil
from pathlib import Path

import pytest
from pyinfra import host
from roles import checks

from podium.drivers.pyinfra_runner import run_component
from tests.fixtures_local_deploy import run_locally


def test_a_passing_check_is_no_change() -> None:
    changes, error = run_locally(
        lambda: checks.passes(name="Both pass", commands=["true", "test -d /"], proves="a root folder")
    )
    assert (changes, error) == (0, None)


def test_a_failing_check_fails_with_what_it_expected_and_what_the_node_said() -> None:
    changes, error = run_locally(
        lambda: checks.passes(name="Second fails", commands=["true", "echo no such unit >&2; exit 3"],
                              proves="podium-example active")
    )
    assert error is not None, "a failing check passed"
    assert "check failed, expected podium-example active: no such unit" in error


def test_the_first_failing_command_stops_the_check() -> None:
    mark = Path("/tmp") / "podium-check-not-run"
    mark.unlink(missing_ok=True)
    _, error = run_locally(
        lambda: checks.passes(name="Stops", commands=["false", f"touch {mark}"], proves="nothing")
    )
    assert error is not None and not mark.exists()


def test_a_roles_check_verb_fails_where_its_thing_is_missing() -> None:
    """The gpu role's check on this machine, which has no NVIDIA driver."""
    if shutil.which("nvidia-smi"):
        pytest.skip("this machine has nvidia-smi: the failing check cannot be shown on it")
    run = run_component([("@local", {})], "gpu", "check")
    assert run.changes == 0
    assert "check failed, expected nvidia-smi -L lists the GPUs" in run.failed["@local"]


def test_user_as_declared_reads_the_account() -> None:
    me = pwd.getpwuid(0)
    seen: list[bool] = []

    def probe() -> None:
        seen.append(checks.user_as_declared(me.pw_name, "root", me.pw_dir, me.pw_shell))
        seen.append(checks.user_as_declared(me.pw_name, "root", me.pw_dir, "/usr/sbin/nologin"))
        seen.append(checks.user_as_declared("podium-no-such-user", "root", me.pw_dir, me.pw_shell))
        host.noop("probed")

    assert run_locally(probe) == (0, None)
    assert seen == [True, False, False]
