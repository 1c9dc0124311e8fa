"""Each node's release and drift as `podium status` shows it: from state files and release records
written as `podium up` writes them, against the plan of stacks/lab, and printed at 80 columns next
to a real Prometheus' figures."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from rich.console import Console

from podium.cli import status as status_cli
from podium.plan import make_plan
from podium.plan.drift import node_drift, parse_release
from podium.plan.state import HostState, parse_state
from podium.render import REPO
from podium.stack import load_stack
from podium.stack.versions import load_versions
from tests.fixtures_monitoring import FakeAppliance, fake_appliance  # noqa: F401

LAB = load_stack(REPO / "stacks" / "lab")
# A model digest as the registry gives it, so engines plan exactly as they were recorded.
DIGESTS = {e.model: "sha256:" + "ab" * 32 for e in LAB.engines}


def recorded_lab(tmp_path: Path) -> dict[str, HostState]:
    """The state files a `podium up` of stacks/lab leaves on its nodes, read back from disk."""
    states = {h: HostState(host=h) for h in LAB.node_names}
    for action in make_plan(LAB, load_versions(), {}, DIGESTS):
        assert action.to_version and action.config_hash
        states[action.host].record(action.component, action.to_version, action.config_hash)
    out = {}
    for host, state in states.items():
        path = tmp_path / host / "state.json"
        path.parent.mkdir()
        path.write_text(state.to_json())
        out[host] = parse_state(path.read_text(), f"{host}:{path}")
    return out


def release_record(number: int, host: str) -> str:
    """A node's release record as the releases write it (/var/lib/podium/releases/current.json)."""
    return json.dumps({"format": 2, "number": number, "stack": "lab", "host": host,
                       "created_at": "2026-11-30T04:12:09+00:00", "by": "root@control", "kind": "up",
                       "components": {}})


def printed(tmp_path: Path, appliance: FakeAppliance, releases: dict[str, int]) -> tuple[list[str], list]:
    states = recorded_lab(tmp_path)
    # Drift: node1's llama.cpp recorded at an older version, ctrl keeping a component the stack
    # no longer declares.
    old = states["node1"].components["engine-llamacpp"]
    states["node1"].components["engine-llamacpp"] = old.model_copy(update={"version": "100.0.0"})
    states["ctrl"].record("engine-vllm", "0.6.3", "0" * 16)
    nodes = node_drift(
        states,
        {h: parse_release(release_record(n, h)) for h, n in releases.items()},
        make_plan(LAB, load_versions(), states, DIGESTS),
    )
    console = Console(record=True, width=80, color_system=None)
    versions = {h: {c: s.version for c, s in st.components.items()} for h, st in states.items()}
    status_cli.show_status(appliance.url, versions=versions, releases=nodes, console=console, window="10s")
    return console.export_text().splitlines(), nodes


def test_status_at_80_columns_shows_one_line_per_component_with_release_and_drift(
    tmp_path: Path, fake_appliance: FakeAppliance  # noqa: F811
) -> None:
    lines, nodes = printed(tmp_path, fake_appliance, {"ctrl": 7, "node1": 7, "node2": 6})
    too_wide = [line for line in lines if len(line) > 80]
    assert not too_wide, f"lines wider than 80 columns: {too_wide}"
    table = lines[next(i for i, line in enumerate(lines) if line.startswith("Releases and drift")):]
    rows = sum(len(n.components) + 1 for n in nodes)
    # Title, header, the borders around it, one line between nodes, the last: nothing else, so no
    # cell wrapped onto a second line.
    assert len(table) == rows + 4 + len(nodes) - 1 + 1, "\n".join(table)
    for node in nodes:
        for c in node.components:
            version = status_cli.short_version(c.recorded)
            assert any(c.component in line and version in line for line in table), (
                f"{node.host} {c.component} {version} not on one line:\n" + "\n".join(table))
    first = {line.split()[1]: line for line in table if line.split()[1:2] in (["ctrl"], ["node1"], ["node2"])}
    assert "release" in first["ctrl"] and " 7 " in first["ctrl"] and "2026-11-30 04:12" in first["ctrl"]
    assert " 6 " in first["node2"]
    drifted = {(n.host, c.component): c.drift for n in nodes for c in n.components if c.drift}
    assert drifted == {("node1", "engine-llamacpp"): "upgrade", ("ctrl", "engine-vllm"): "not declared"}
    upgrade = next(line for line in table if "engine-llamacpp" in line and "100.0.0" in line)
    assert "(upgrade)" in upgrade
    assert all("same" in line for line in table if "base " in line)


def test_status_without_release_records_shows_recorded_versions(
    tmp_path: Path, fake_appliance: FakeAppliance  # noqa: F811
) -> None:
    lines, nodes = printed(tmp_path, fake_appliance, {})
    assert all(n.release is None for n in nodes)
    assert not [line for line in lines if len(line) > 80]
    table = lines[next(i for i, line in enumerate(lines) if line.startswith("Releases and drift")):]
    assert not [line for line in table if "│ release " in line], "\n".join(table)
    first = next(n for n in nodes if n.host == "ctrl").components[0]
    assert any(f"│ ctrl  │ {first.component} " in line and first.recorded in line for line in table), (
        "\n".join(table))


@pytest.mark.parametrize("text", ["", "not json", "{}", '{"number": "7"}', '{"number": true}', "[1]"])
def test_an_unreadable_release_record_is_no_release(text: str) -> None:
    assert parse_release(text) is None


def test_node_row_names_release_and_drift_count(tmp_path: Path) -> None:
    states = recorded_lab(tmp_path)
    states["node2"].components.pop("engine-predictive")
    nodes = node_drift(states, {"node2": parse_release(release_record(3, "node2"))},
                       make_plan(LAB, load_versions(), states, DIGESTS))
    by_host = {n.host: n for n in nodes}
    assert [c.component for c in by_host["node2"].drifted] == ["engine-predictive"]
    assert by_host["node2"].drifted[0].drift == "not laid down"
    versions = {h: {c: s.version for c, s in st.components.items()} for h, st in states.items()}
    assert status_cli._node_release("node2", versions, by_host) == "release 3 [yellow]drift 1[/]"
    assert status_cli._node_release("ctrl", versions, by_host) == f"{len(versions['ctrl'])} recorded"


def test_engines_without_registry_digests_compare_by_version_only(tmp_path: Path) -> None:
    states = recorded_lab(tmp_path)
    blind = make_plan(LAB, load_versions(), states, None)
    assert any(a.action == "reconfigure" for a in blind), "recorded engine configs carry digests"
    nodes = node_drift(states, {}, blind, exact_engines=False)
    assert not [c for n in nodes for c in n.drifted]
