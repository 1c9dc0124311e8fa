"""`podium finetune` refuses what it cannot train before anything is pushed or started: a bad
dataset line (named), a stack with no trainer node, a base that is not a Hugging Face folder."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest
import typer
import yaml

from podium.cli import finetune as finetune_cli
from podium.finetune.job import Hyperparameters
from podium.models import make_tiny
from tests.fixtures_gateway import CliRun, invoke
from tests.fixtures_registry import RunningRegistry, registry
from tests.test_finetune_dataset import conversation
from tests.test_registry_cli import at, push

__all__ = ["registry"]  # the fixture, imported so pytest finds it


def podium(*args: str) -> CliRun:
    app = typer.Typer()
    finetune_cli.register(app)
    return invoke(app, *args)


def lab_stack(tmp_path: Path, trainer: str | None = "node2") -> Path:
    """The lab's stack file, with `trainer` labelled for training."""
    data = yaml.safe_load(Path("stacks/lab/stack.yaml").read_text())
    for node in data["nodes"]:
        if node["name"] == trainer:
            node["labels"] = {**node.get("labels", {}), "trainer": "true"}
    folder = tmp_path / "stack"
    folder.mkdir()
    (folder / "stack.yaml").write_text(yaml.safe_dump(data))
    return folder


def chat(tmp_path: Path, *bad: str) -> Path:
    path = tmp_path / "chat.jsonl"
    path.write_text("".join(line + "\n" for line in [conversation("Hi", "Hello!"), *bad]))
    return path


def datasets(reg: RunningRegistry) -> list[str]:
    catalog = httpx.get(f"http://{reg.address}/v2/_catalog").json()["repositories"] or []
    return [r for r in catalog if r.startswith("datasets/")]


def finetune(stack: Path, data: Path, reg: RunningRegistry, *extra: str) -> CliRun:
    return podium("finetune", str(stack), "--base", "refusal-base:1", "--data", str(data),
                  "--name", "support", *at(reg), *extra)


def test_a_malformed_line_is_refused_naming_it_before_anything_is_pushed(
        registry: RunningRegistry, tmp_path: Path) -> None:
    run = finetune(lab_stack(tmp_path), chat(tmp_path, '{"messages": [{"role": "user"}]}'), registry)
    assert run.exit_code == 2
    assert run.error.endswith("chat.jsonl line 2: messages[0].content is missing; give the message "
                              "text as a non-empty string.")
    assert datasets(registry) == []


def test_a_stack_without_a_trainer_node_and_an_unlabelled_node_are_refused(
        registry: RunningRegistry, tmp_path: Path) -> None:
    run = finetune(lab_stack(tmp_path, trainer=None), chat(tmp_path), registry)
    assert (run.exit_code, run.error) == (2, "stack 'lab' labels no node for training; add labels: "
                                          '{trainer: "true"} to a node and run podium up.')
    other = tmp_path / "other"
    other.mkdir()
    run = finetune(lab_stack(other), chat(tmp_path), registry, "--node", "node1")
    assert (run.exit_code, run.error) == (2, "--node 'node1' is not labelled for training in "
                                          "'lab'; use one of: node2.")
    assert datasets(registry) == []


@pytest.mark.parametrize(("flag", "value", "expected"), [
    ("--epochs", "0", "--epochs 0 is out of range; give 1 to 1000."),
    ("--lr", "2", "--lr 2.0 is out of range; give a rate above 0 and below 1 (e.g. 1e-3)."),
    ("--rank", "0", "--rank 0 is out of range; give 1 to 256 (e.g. 8)."),
])
def test_hyperparameters_out_of_range_are_refused(registry: RunningRegistry, tmp_path: Path,
                                                  flag: str, value: str, expected: str) -> None:
    run = finetune(lab_stack(tmp_path), chat(tmp_path), registry, flag, value)
    assert (run.exit_code, run.error) == (2, expected)


def test_a_gguf_base_is_refused_since_training_needs_the_hf_folder(registry: RunningRegistry,
                                                                   tmp_path: Path) -> None:
    push(registry, make_tiny("gguf", tmp_path / "tiny.gguf"), "refusal-base", "1")
    run = finetune(lab_stack(tmp_path), chat(tmp_path), registry)
    assert run.exit_code == 2
    assert run.error.startswith("--base refusal-base:1 is a gguf model; fine-tuning needs its "
                                "Hugging Face folder")
    assert datasets(registry) == []


def test_hyperparameters_reach_the_trainer_as_its_own_flags() -> None:
    from podium.finetune import train

    args = train.parse_args(["--base", "b", "--data", "d", "--out", "o",
                             *Hyperparameters(epochs=4, lr=0.003, rank=16, seed=2).args()])
    assert (args.epochs, args.lr, args.rank, args.seed) == (4, 0.003, 16, 2)
    assert json.dumps(Hyperparameters().to_dict()) == '{"epochs": 3, "lr": 0.001, "rank": 8, "seed": 0}'
