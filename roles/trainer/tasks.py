"""Role trainer, its verbs: deploy, check, remove."""

from collections.abc import Mapping
from pathlib import Path

from pyinfra import host
from pyinfra.api import deploy as pyinfra_deploy
from pyinfra.operations import apt, files

from podium.artifacts import wheelhouse
from podium.finetune import train
from podium.finetune.toolchain import TRAINER, trainer_build, trainer_requirements
from podium.pinned import node_versions
from roles import checks, folders
from roles.engine_common import steps
from roles.trainer.defaults import DEFAULTS


@pyinfra_deploy("trainer: deploy", data_defaults=DEFAULTS)
def deploy() -> None:
    apt.packages(
        name="python3-venv for the trainer's venv",
        packages=node_versions().pinned(TRAINER, ["python3-venv"]),
        cache_time=24 * 3600,
        update=True,
    )
    mirror = (host.data.podium_trainer or {}).get("mirror")
    lay_down(host.data.trainer_home, host.data.trainer_wheelhouses, mirror)


def lay_down(home: str, wheelhouses: str, mirror: Mapping[str, str] | None = None) -> None:
    """The trainer's venv behind `<home>/venv`, and the training script beside it. The venv comes
    from the bundle's wheelhouse on the mirror where the stack has one (nothing crosses the
    control machine's link), else from the wheelhouse the control machine downloads once."""
    versions = node_versions()
    build = trainer_build(versions)
    if mirror:
        venv = f"{home}/{build}"
        steps.venv_from_mirror(venv, mirror, TRAINER, [], what=build)
    else:
        requirements = trainer_requirements(versions)
        folder = wheelhouse(build, requirements)
        remote = f"{wheelhouses}/{folder.name}"
        folders.shipped(name=f"Wheelhouse {folder.name}", src=str(folder), dest=remote)
        venv = f"{home}/{folder.name}"
        steps.venv_from_wheelhouse(venv, remote, requirements, what=build)
    # A job runs `<home>/venv/bin/python <home>/train.py`; an upgrade flips the link only.
    files.link(name=f"Use {venv}", path=f"{home}/venv", target=venv, force=True)
    files.put(name="Training script", src=str(Path(train.__file__)), dest=f"{home}/train.py",
              mode="644")


@pyinfra_deploy("trainer: check", data_defaults=DEFAULTS)
def check() -> None:
    home = host.data.trainer_home
    checks.passes(
        name="The trainer's venv runs its script",
        commands=[f"{home}/venv/bin/python {home}/train.py --help"],
        proves="the trainer venv imports and train.py answers --help",
    )


@pyinfra_deploy("trainer: remove", data_defaults=DEFAULTS)
def remove() -> None:
    files.directory(name="Trainer venvs and script", path=host.data.trainer_home, present=False)
