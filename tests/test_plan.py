"""The plan: dependency order from nothing, keep when state matches, upgrade/downgrade of one
component on its hosts only, reconfigure on changed settings, removals last."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from podium.plan import COMPONENT_NAMES, make_plan
from podium.plan.actions import compare_versions
from podium.plan.state import HostState, parse_states
from podium.registry.sync import model_source
from podium.stack import load_stack
from podium.stack.versions import load_versions

STACKS = ["stacks/lab", "stacks/single-gpu", "stacks/hybrid"]


def applied(actions):
    """The recorded state a successful run of these actions leaves behind."""
    states = {}
    for a in actions:
        if a.action != "remove":
            states.setdefault(a.host, HostState(host=a.host)).record(a.component, a.to_version, a.config_hash)
    return states


@pytest.mark.parametrize("stack", STACKS)
def test_example_stacks_load_and_plan_in_dependency_order(stack):
    actions = make_plan(load_stack(stack), load_versions())
    assert actions and all(a.action == "install" for a in actions)
    order = [COMPONENT_NAMES.index(a.component) for a in actions]
    assert order == sorted(order), "components out of dependency order"


@pytest.mark.parametrize("stack", STACKS)
def test_example_stacks_name_only_models_they_make_or_the_operator_keeps(stack, tmp_path, monkeypatch):
    # A relative source must ship with the stack and a tiny one is made on the spot; only an
    # absolute folder (an operator's multi-gigabyte weights) may be missing from the repository.
    monkeypatch.setenv("PODIUM_STATE_DIR", str(tmp_path))
    loaded = load_stack(stack)
    for index, model in enumerate(loaded.models):
        if Path(model.source).is_absolute():
            assert model.source.startswith("/srv/models/"), model.source
            continue
        assert model_source(loaded, index, model).exists(), f"{stack}: model {model.name} has no source"


def test_lab_order_is_mirror_base_network_storage_registry_engines_monitoring_gateway():
    actions = make_plan(load_stack("stacks/lab"), load_versions())
    seen = list(dict.fromkeys(a.component for a in actions))
    assert seen == [
        "mirror",
        "base",
        "network",
        "storage",
        "registry",
        "engine-llamacpp",
        "engine-predictive",
        "monitoring",
        "gateway",
    ]


def test_state_equal_to_stack_keeps_everything():
    stack, versions = load_stack("stacks/lab"), load_versions()
    actions = make_plan(stack, versions, applied(make_plan(stack, versions)))
    assert {a.action for a in actions} == {"keep"}


def test_a_component_a_run_left_unsettled_is_laid_down_again_by_the_same_stack():
    """After a failed run, the release the host recorded must not read as already there."""
    stack, versions = load_stack("stacks/lab"), load_versions()
    states = applied(make_plan(stack, versions))
    engine_host = next(a.host for a in make_plan(stack, versions) if a.component == "engine-llamacpp")
    states[engine_host].unsettle("engine-llamacpp")
    states[engine_host].unsettle("engine-llamacpp")  # twice is once
    assert states[engine_host].components["engine-llamacpp"].config_hash.count("unsettled:") == 1
    changed = {(a.host, a.component, a.action) for a in make_plan(stack, versions, states) if a.action != "keep"}
    assert changed == {(engine_host, "engine-llamacpp", "reconfigure")}


def test_version_bump_upgrades_that_component_on_its_hosts_only(tmp_path):
    stack, versions = load_stack("stacks/lab"), load_versions()
    state = applied(make_plan(stack, versions))
    bumped = stack.model_copy(update={"versions": {"engine-llamacpp": "99999.0.0"}})
    changed = [a for a in make_plan(bumped, versions, state) if a.action != "keep"]
    assert {(a.component, a.host, a.action) for a in changed} == {
        ("engine-llamacpp", "node1", "upgrade"),
        ("engine-llamacpp", "node2", "upgrade"),
    }
    older = stack.model_copy(update={"versions": {"engine-llamacpp": "100.0.0"}})
    assert {a.action for a in make_plan(older, versions, state) if a.component == "engine-llamacpp"} == {
        "downgrade"
    }


def test_changed_engine_arguments_reconfigure_that_engine(tmp_path):
    text = Path("stacks/lab/stack.yaml").read_text()
    (tmp_path / "stack.yaml").write_text(text.replace("threads: 1", "threads: 2"))
    versions = load_versions()
    state = applied(make_plan(load_stack("stacks/lab"), versions))
    changed = [a for a in make_plan(load_stack(tmp_path), versions, state) if a.action != "keep"]
    assert {(a.component, a.action) for a in changed} == {("engine-llamacpp", "reconfigure")}


def test_moved_alias_digest_reconfigures_engines():
    stack, versions = load_stack("stacks/lab"), load_versions()
    first = {"tiny-llama:stable": "sha256:" + "a" * 64, "iris:1": "sha256:" + "b" * 64}
    state = applied(make_plan(stack, versions, digests=first))
    moved = {**first, "tiny-llama:stable": "sha256:" + "c" * 64}
    changed = [a for a in make_plan(stack, versions, state, digests=moved) if a.action != "keep"]
    assert {a.component for a in changed} == {"engine-llamacpp"}


def test_components_no_longer_declared_are_removed_last_in_reverse_order():
    stack, versions = load_stack("stacks/lab"), load_versions()
    state = applied(make_plan(stack, versions))
    state["node1"].record("engine-vllm", "0.1", "x")
    state["ctrl"].record("kubernetes", "v1", "y")
    actions = make_plan(stack, versions, state)
    tail = [(a.component, a.host, a.action) for a in actions[-2:]]
    assert tail == [("engine-vllm", "node1", "remove"), ("kubernetes", "ctrl", "remove")]


def test_compare_versions_handles_debian_and_pep440():
    assert compare_versions("2.8.2+ds1-1", "2.8.3+ds1-1") == -1
    assert compare_versions("11434.0.0", "11401.0.0") == 1
    assert compare_versions("1.0.0", "1.0.0") == 0


def test_plan_json_cli_and_state_from(tmp_path):
    stack, versions = load_stack("stacks/lab"), load_versions()
    state = applied(make_plan(stack, versions))
    state_file = tmp_path / "state.json"
    state_file.write_text(json.dumps([json.loads(s.to_json()) for s in state.values()]))
    assert set(parse_states(state_file.read_text(), "x")) == {"ctrl", "node1", "node2"}
    out = subprocess.run(
        [sys.executable, "-m", "podium", "plan", "stacks/lab", "--json", "--state-from", str(state_file)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    items = json.loads(out)
    assert {i["action"] for i in items} == {"keep"}
    assert {"host", "component", "action", "from_version", "to_version"} <= set(items[0])


def test_render_is_byte_stable(tmp_path):
    for run in ("a", "b"):
        subprocess.run(
            [sys.executable, "-m", "podium", "render", "stacks/lab", "--out", str(tmp_path / run)],
            check=True,
            capture_output=True,
        )
    files_a = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*") if p.is_file())
    files_b = sorted(p.relative_to(tmp_path / "b") for p in (tmp_path / "b").rglob("*") if p.is_file())
    assert files_a == files_b and files_a
    for rel in files_a:
        assert (tmp_path / "a" / rel).read_bytes() == (tmp_path / "b" / rel).read_bytes(), rel


def test_plan_says_when_engines_differ_only_for_want_of_digests(tmp_path):
    stack, versions = load_stack("stacks/lab"), load_versions()
    refs = {r["model_ref"] for a in make_plan(stack, versions) if a.component.startswith("engine-")
            for r in a.settings["replicas"]}
    # As `podium up` records it: engine configs hashed with the digests the registry gave.
    state = applied(make_plan(stack, versions, digests={ref: "sha256:" + "ab" * 32 for ref in refs}))
    state_file = tmp_path / "state.json"
    state_file.write_text(json.dumps([json.loads(s.to_json()) for s in state.values()]))
    out = subprocess.run(
        [sys.executable, "-m", "podium", "plan", "stacks/lab", "--state-from", str(state_file)],
        capture_output=True, text=True, check=True, env={**os.environ, "COLUMNS": "200"},
    ).stdout
    assert "reconfigure" in out
    assert "note: engines are planned without model digests" in out
    assert "podium up --dry-run stacks/lab" in out


def test_a_stack_without_host_network_or_admin_sources_is_never_planned_open():
    # Validation refuses such a stack; one built past it (model_copy skips the rules) must not
    # get SSH and the admin ports opened to 0.0.0.0/0 by the plan either.
    from podium.errors import InvalidInput

    stack = load_stack("stacks/single-gpu")
    bare = stack.model_copy(update={
        "host_network": None,
        "network": stack.network.model_copy(update={"admin_sources": []}),
    })
    with pytest.raises(InvalidInput, match="admin_sources"):
        make_plan(bare, load_versions())
