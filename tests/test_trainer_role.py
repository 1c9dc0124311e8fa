"""Role trainer: planned on the nodes a stack labels for training, and its venv and script laid
down on this machine through pyinfra's local connector, offline from the wheelhouse, once."""

from __future__ import annotations

import subprocess
from pathlib import Path

from roles.trainer import tasks

from podium.bundle.contents import Wheelhouse, bundle_contents
from podium.finetune.toolchain import TRAINER, trainer_build, trainer_requirements
from podium.plan import make_plan
from podium.plan.components import BY_NAME
from podium.stack import load_stack
from podium.stack.versions import load_versions
from tests.fixtures_local_deploy import run_locally


def test_the_trainer_is_planned_after_base_on_labelled_nodes_only() -> None:
    stack, versions = load_stack("stacks/lab"), load_versions()
    assert not [a for a in make_plan(stack, versions) if a.component == "trainer"]
    nodes = [n.model_copy(update={"labels": {**n.labels, "trainer": "true"}}) if n.name == "node2"
             else n for n in stack.nodes]
    actions = make_plan(stack.model_copy(update={"nodes": nodes}), versions)
    trainer = [a for a in actions if a.component == "trainer"]
    assert [(a.host, a.action, a.to_version) for a in trainer] == [
        ("node2", "install", versions.components["trainer"].version)]
    order = [a.component for a in actions]
    assert order.index("base") < order.index("trainer") < order.index("engine-llamacpp")


def test_a_bundle_stack_carries_the_trainers_wheelhouse_and_its_node_installs_from_the_mirror(
    tmp_path: Path,
) -> None:
    """With `artifact_mirror: {bundle: …}` the bundle holds the trainer's pins as their own
    wheelhouse (the download the role makes without a bundle, so torch is fetched once) and the
    trainer node is told to install from the mirror; without one it is told nothing."""
    folder = tmp_path / "lab"
    folder.mkdir()
    text = Path("stacks/lab/stack.yaml").read_text()
    (folder / "stack.yaml").write_text(text.replace(
        "address: 10.77.0.12\n    labels: {role: worker}",
        'address: 10.77.0.12\n    labels: {role: worker, trainer: "true"}'))
    stack, versions = load_stack(str(folder)), load_versions()
    house = bundle_contents(stack, versions).wheelhouses[TRAINER]
    assert house == Wheelhouse(trainer_requirements(versions), download=trainer_build(versions))
    mirror = BY_NAME["trainer"].settings(stack, "node2")["mirror"]
    assert mirror["url"] == "https://10.77.0.10:8440"
    online = stack.model_copy(update={"artifact_mirror": None})
    assert BY_NAME["trainer"].settings(online, "node2") == {"mirror": None}
    assert TRAINER not in bundle_contents(load_stack("stacks/lab"), versions).wheelhouses


def test_the_venv_and_script_are_laid_down_offline_once(tmp_path: Path) -> None:
    home, houses = tmp_path / "trainer", tmp_path / "wheelhouses"
    changes, error = run_locally(lambda: tasks.lay_down(str(home), str(houses)))
    assert error is None, error
    assert changes > 0
    assert (home / "venv").resolve().name.startswith(trainer_build())
    versions = subprocess.run(
        [str(home / "venv" / "bin" / "python"), "-c",
         "import importlib.metadata as m, peft, torch; print(m.version('peft'), torch.__version__)"],
        capture_output=True, text=True, check=True).stdout.split()
    pins = dict(r.split("==", 1) for r in load_versions().components["trainer"].requirements)
    assert versions == [pins["peft"], pins["torch"]]
    usage = subprocess.run([str(home / "venv" / "bin" / "python"), str(home / "train.py"), "--help"],
                           capture_output=True, text=True, check=True).stdout
    assert "--rank" in usage
    assert run_locally(lambda: tasks.lay_down(str(home), str(houses))) == (0, None)
