"""The Pulumi engine's `podium:host:Component` provider, for real on a lab machine: its create,
update and delete run the same pyinfra role `podium up` runs and record the host's state. (The
Pulumi engine itself is not installed here; the provider is plain Python and is called as the
engine would call it.)"""

import json
import subprocess
import sys
from pathlib import Path

import pytest
from rich.console import Console

from podium.lab import up as lab
from podium.plan import make_plan
from podium.pulumi.host import RoleProvider
from podium.stack import load_stack
from podium.stack.versions import load_versions
from podium.up import recorded_states
from tests.fixtures_lab import require_lab_host

pytestmark = pytest.mark.lab
STACK = str(Path(__file__).parent / "stacks" / "labpulumi")


@pytest.fixture(scope="module")
def machines():
    require_lab_host()
    stack = load_stack(STACK)
    quiet = Console(quiet=True)
    try:
        lab.machines_up(lab.lab_parts(stack), quiet)
        yield stack
    finally:
        lab.lab_down(stack, quiet)


def props(stack, version=None):
    [action] = [a for a in make_plan(stack, load_versions()) if a.component == "base"]
    return {"stack": STACK, "component": "base", "host": "solo",
            "version": version or action.to_version, "config_hash": action.config_hash}


def test_create_update_delete_run_the_role_and_record_state(machines):
    provider = RoleProvider()
    created = provider.create(props(machines))
    assert created.id == "solo/base"
    state = recorded_states(machines)["solo"].components["base"]
    assert state.config_hash == props(machines)["config_hash"]
    verified = subprocess.run([sys.executable, "-m", "podium", "verify", STACK, "--json"],
                              capture_output=True, text=True, timeout=600)
    assert verified.returncode == 0, verified.stderr
    assert json.loads(verified.stdout)[0]["passed"]

    newer = props(machines, version="1.0.1")
    assert provider.diff("solo/base", props(machines), newer).changes
    provider.update("solo/base", props(machines), newer)
    assert recorded_states(machines)["solo"].components["base"].version == "1.0.1"

    provider.delete("solo/base", newer)
    assert "base" not in recorded_states(machines)["solo"].components
    ruleset = subprocess.run([sys.executable, "-m", "podium", "lab", "ssh", "solo", "--stack", STACK, "--",
                              "nft", "list", "ruleset"], capture_output=True, text=True).stdout
    assert "policy drop" not in ruleset, "remove should have opened the firewall again"
