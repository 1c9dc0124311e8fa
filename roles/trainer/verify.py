"""Role trainer, proved on each host: the venv holds the pinned torch (CPU), transformers and peft
and imports them, and the training script answers --help with that venv."""

from podium.finetune.toolchain import trainer_requirements
from podium.pinned import node_versions

HOME = "/opt/podium/trainer"


def test_010_venv_holds_the_pinned_libraries(host):
    pins = dict(r.split("==", 1) for r in trainer_requirements(node_versions()))
    script = ("import importlib.metadata as m, torch, transformers, peft; "
              "print(' '.join(f'{d}=={m.version(d)}' for d in ('torch', 'transformers', 'peft')))")
    found = host.check_output(f"{HOME}/venv/bin/python -c \"{script}\"").split()
    expected = [f"{d}=={pins[d]}" for d in ("torch", "transformers", "peft")]
    assert found == expected, f"{HOME}/venv imports {found}; the table pins {expected}"


def test_020_training_script_answers_help(host):
    run = host.run(f"{HOME}/venv/bin/python {HOME}/train.py --help")
    assert run.rc == 0 and "--rank" in run.stdout, (
        f"{HOME}/train.py --help exited {run.rc}, expected usage naming --rank: {run.stderr[-300:]}")
