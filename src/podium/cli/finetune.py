"""`podium finetune` and `podium jobs`: LoRA adapters trained on a trainer node, pushed with lineage."""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from podium.cli.model import CaOpt, InsecureOpt, JsonOpt, RegistryOpt, connect
from podium.errors import InvalidInput
from podium.registry import ModelRef, Registry
from podium.stack import load_stack

jobs_app = typer.Typer(name="jobs", help="Fine-tuning jobs on a stack's trainer nodes.",
                       no_args_is_help=True)
out = Console(highlight=False)
err = Console(stderr=True, highlight=False)

StackArg = Annotated[str, typer.Argument(help="Stack folder or stack.yaml.")]
NodeOpt = Annotated[str | None, typer.Option("--node", help="A node labelled trainer: \"true\" (default: the first).")]


def finetune(
    stack: StackArg,
    base: Annotated[str, typer.Option(
        "--base", help="Base model NAME:VERSION (a Hugging Face folder in the registry).")],
    data: Annotated[Path, typer.Option("--data", help="Chat JSONL: one {\"messages\": [...]} per line.")],
    name: Annotated[str, typer.Option("--name", help="The adapter's model name.")],
    node: NodeOpt = None,
    epochs: Annotated[int, typer.Option("--epochs", help="Passes over the dataset.")] = 3,
    lr: Annotated[float, typer.Option("--lr", help="Learning rate.")] = 1e-3,
    rank: Annotated[int, typer.Option("--rank", help="LoRA rank.")] = 8,
    seed: Annotated[int, typer.Option("--seed", help="Seeds the adapter's start and the data order.")] = 0,
    timeout: Annotated[float, typer.Option("--timeout", help="Seconds to follow the job.")] = 3600,
    registry: RegistryOpt = None,
    insecure: InsecureOpt = False,
    ca: CaOpt = None,
) -> None:
    """Train a LoRA adapter on a trainer node and push it as a new version of NAME with its lineage."""
    from podium.finetune.dataset import load_dataset
    from podium.finetune.job import Hyperparameters, trainer_node
    from podium.registry.ref import check_name

    # Everything the user can get wrong is refused here, before anything is pushed or started.
    loaded = load_stack(stack)
    dataset = load_dataset(data)
    hyper = Hyperparameters(epochs=epochs, lr=lr, rank=rank, seed=seed).check()
    check_name(name)
    on = trainer_node(loaded, node)
    reg = connect(stack, registry, insecure, ca)
    base_ref = ModelRef.parse(base)
    info = reg.show(base_ref)
    if info.format != "safetensors":
        raise InvalidInput(f"--base {base} is a {info.format} model; fine-tuning needs its Hugging Face "
                           "folder (safetensors, config.json, tokenizer.json): push that as the base.")
    # Only a stack whose jobs run on the cluster needs the kubernetes client (an extra).
    if loaded.trains_on_cluster:
        _run_on_cluster(loaded, reg, node, base_ref, info.digest, dataset, name, hyper, timeout)
    else:
        _run(loaded, reg, on, base_ref, info.digest, dataset, name, hyper, timeout)


def _run(loaded: Any, reg: Registry, on: str, base_ref: ModelRef, base_digest: str, dataset: Any,
         name: str, hyper: Any, timeout: float) -> None:
    from podium.finetune import job as jobs
    from podium.finetune.node import NodeShell
    from podium.finetune.publish import push_dataset

    dataset_digest = push_dataset(reg, dataset, name)
    err.print(f"dataset datasets/{name} {dataset_digest}", soft_wrap=True)
    job = jobs.new_job_id(name)
    home = f"{jobs.JOBS_DIR}/{job}"
    shell = NodeShell(loaded, on)
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="podium-finetune-") as tmp:
        local = Path(tmp)
        base_dir = reg.pull(base_ref, local / "base")
        shell.put(base_dir, home)
        shell.put(dataset.path, home)
        jobs.start(shell, job, dataset.path.name, hyper)
        err.print(f"job {job} on {on}")
        done = jobs.follow(shell, job, _show, timeout)
        adapter = shell.get(f"{home}/adapter", local / "trained")
        _publish(reg, adapter, base_dir, base_ref, base_digest, name, dataset_digest, hyper,
                 f"job {done.get('seconds')} s on {on}", started)


def _run_on_cluster(loaded: Any, reg: Registry, node: str | None, base_ref: ModelRef,
                    base_digest: str, dataset: Any, name: str, hyper: Any, timeout: float) -> None:
    """The same run as a Kubernetes Job: the cluster pulls the base and the dataset by digest."""
    from podium.cluster.stack_inputs import stack_inputs
    from podium.cluster.trainer_job import TrainingRun, trainer_job
    from podium.cluster.up import api_client
    from podium.finetune import cluster_run
    from podium.finetune import job as jobs
    from podium.finetune.publish import push_dataset
    from podium.finetune.toolchain import trainer_build
    from podium.stack.versions import load_versions

    # A stack without a reachable kubeconfig is refused before the dataset is pushed.
    api = api_client(loaded)
    dataset_digest = push_dataset(reg, dataset, name)
    err.print(f"dataset datasets/{name} {dataset_digest}", soft_wrap=True)
    # A Job's name is at most 63 characters: the id keeps 40 of the model's name.
    job = jobs.new_job_id(name[:40])
    run = TrainingRun(job=job, base=base_ref.name, base_digest=base_digest, dataset=name,
                      dataset_digest=dataset_digest, data_file=dataset.path.name,
                      hyperparameters=hyper.to_dict(), args=hyper.args(), trainer=trainer_build(),
                      node=node)
    namespace = loaded.kubernetes.namespace
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="podium-finetune-") as tmp:
        local = Path(tmp)
        cluster_run.create(api, namespace, trainer_job(loaded, load_versions(), run, stack_inputs(loaded)))
        err.print(f"job {job} on the cluster (namespace {namespace})")
        done = cluster_run.follow(api, namespace, job, _show, timeout, local / "adapter")
        base_dir = reg.pull(base_ref, local / "base")
        _publish(reg, local / "adapter", base_dir, base_ref, base_digest, name, dataset_digest,
                 hyper, f"job {done.get('seconds')} s on the cluster", started)


def _publish(reg: Registry, adapter: Path, base_dir: Path, base_ref: ModelRef, base_digest: str,
             name: str, dataset_digest: str, hyper: Any, ran: str, started: float) -> None:
    """Convert the PEFT adapter to a GGUF LoRA and push it as NAME's next version with its lineage."""
    from podium.finetune.convert import lora_to_gguf
    from podium.finetune.publish import lineage, push_adapter
    from podium.finetune.toolchain import llamacpp_converters, trainer_build, trainer_venv
    from podium.stack.versions import load_versions

    version = load_versions().components["engine-llamacpp"].version
    gguf = lora_to_gguf(adapter, base_dir, adapter.parent / f"{name}.gguf",
                        python=trainer_venv() / "bin" / "python",
                        converters=llamacpp_converters(version))
    tag = _next_version(reg, name)
    recorded = lineage(base_ref, base_digest, name, dataset_digest, hyper.to_dict(), trainer_build())
    digest = push_adapter(reg, gguf, name, tag, recorded)
    size = gguf.stat().st_size
    err.print(f"{ran}, {time.monotonic() - started:.0f} s in all; adapter {size} bytes")
    out.print(f"{name}:{tag} {digest}", soft_wrap=True)


def _show(event: dict[str, Any]) -> None:
    if event.get("event") == "step":
        err.print(f"epoch {event['epoch']} step {event['step']} loss {event['loss']:.4f}")
    elif event.get("event") == "start":
        err.print(f"training on {event['examples']} conversations, {event['trainable']} trainable "
                  "parameters")


def _next_version(reg: Registry, name: str) -> str:
    """One past the highest numeric version of NAME (1 for a new model)."""
    numbers = [int(t.tag) for t in reg.tags(name) if t.tag.isdigit()]
    return str(max(numbers, default=0) + 1)


@jobs_app.command("ls")
def jobs_ls(stack: StackArg, node: NodeOpt = None, as_json: JsonOpt = False) -> None:
    """Every fine-tuning job on the stack's trainer nodes, with its state and last loss."""
    from podium.finetune.job import list_jobs
    from podium.finetune.node import NodeShell

    loaded = load_stack(stack)
    cluster = _cluster(loaded)
    if cluster:
        from podium.finetune import cluster_run

        found = cluster_run.list_jobs(cluster, loaded)
    else:
        found = [j for n in _trainer_nodes(loaded, node) for j in list_jobs(NodeShell(loaded, n))]
    if as_json:
        print(json.dumps(found, indent=2))
        return
    for j in found:
        out.print(f"{j['job']:48} {j['node']:12} {j['state']:8} {j['loss'] if j['loss'] is not None else '-'}")


@jobs_app.command("logs")
def jobs_logs(stack: StackArg, job: Annotated[str, typer.Argument(help="The job id.")],
              node: NodeOpt = None) -> None:
    """A job's progress lines and its unit's journal."""
    from podium.finetune.job import logs
    from podium.finetune.node import NodeShell

    loaded = load_stack(stack)
    cluster = _cluster(loaded)
    if cluster:
        from podium.finetune import cluster_run

        print(cluster_run.logs(cluster, loaded, job), end="")
        return
    for n in _trainer_nodes(loaded, node):
        print(logs(NodeShell(loaded, n), job), end="")


@jobs_app.command("cancel")
def jobs_cancel(stack: StackArg, job: Annotated[str, typer.Argument(help="The job id.")],
                node: NodeOpt = None) -> None:
    """Stop a running job; its progress so far stays for `podium jobs logs`."""
    from podium.finetune.job import cancel
    from podium.finetune.node import NodeShell

    loaded = load_stack(stack)
    cluster = _cluster(loaded)
    if cluster:
        from podium.finetune import cluster_run

        if not cluster_run.cancel(cluster, loaded, job):
            raise InvalidInput(f"job {job} is not a Job of {loaded.name}'s cluster; "
                               "see podium jobs ls.")
        print(f"deleted Job {job} and its pod")
        return
    stopped = [n for n in _trainer_nodes(loaded, node) if cancel(NodeShell(loaded, n), job)]
    if not stopped:
        raise InvalidInput(f"job {job} is not running on a trainer node of {loaded.name}; "
                           "see podium jobs ls.")
    print(f"stopped {job} on {stopped[0]}")


def _cluster(loaded: Any) -> Any:
    """A client of the stack's cluster when its jobs run there; None for jobs on nodes' units."""
    if not loaded.trains_on_cluster:
        return None
    from podium.cluster.up import api_client

    return api_client(loaded)


def _trainer_nodes(loaded: Any, node: str | None) -> list[str]:
    from podium.finetune.job import trainer_node

    if node is not None:
        return [trainer_node(loaded, node)]
    trainer_node(loaded, None)  # refuses a stack with none
    return list(loaded.trainer_nodes)


def register(root: typer.Typer) -> None:
    """Add `podium finetune` and `podium jobs` to the root app."""
    root.command("finetune")(finetune)
    root.add_typer(jobs_app, name="jobs")
