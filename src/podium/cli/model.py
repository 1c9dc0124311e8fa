"""`podium model`: push, pull, list, show, tag and remove models in the appliance's registry."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)
from rich.table import Table

from podium.errors import InvalidInput
from podium.registry import ModelRef, Registry

app = typer.Typer(
    name="model",
    help="Models in the appliance's registry: push once, pull by digest, alias, remove.",
    no_args_is_help=True,
)
err = Console(stderr=True, highlight=False)

StackOpt = Annotated[
    str | None,
    typer.Option("--stack", help="Stack folder or stack.yaml; its registry section is used."),
]
RegistryOpt = Annotated[
    str | None,
    typer.Option(
        "--registry",
        help="Registry HOST:PORT (overrides --stack). Credentials come from "
        "PODIUM_REGISTRY_USER and PODIUM_REGISTRY_PASSWORD.",
        envvar="PODIUM_REGISTRY",
    ),
]
InsecureOpt = Annotated[
    bool, typer.Option("--insecure", help="Plain HTTP, for a lab registry on 127.0.0.1.")
]
CaOpt = Annotated[
    Path | None,
    typer.Option("--ca", help="CA certificate (PEM) that signed the registry's certificate."),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]


def connect(stack: str | None, registry: str | None, insecure: bool, ca: Path | None) -> Registry:
    """The registry named on the command line, or the one the stack declares."""
    if ca is not None and not ca.is_file():
        raise InvalidInput(f"--ca {str(ca)!r}: no such file; give the PEM file of Podium's CA")
    if registry:
        return Registry.from_env(registry, insecure=insecure, ca=ca)
    if stack:
        from podium.stack import load_stack

        reg = Registry.for_stack(load_stack(stack), ca=ca)
        if insecure:
            return Registry.from_env(reg.address, insecure=True, ca=ca)
        return reg
    raise InvalidInput(
        "no registry given; pass --registry HOST:PORT (e.g. --registry 127.0.0.1:5000 --insecure) "
        "or --stack STACK"
    )


def _audit(stack: str | None, action: str, target: str, detail: dict[str, object]) -> None:
    """A change to a stack's registry goes into its gateway's audit log (a registry named
    by --registry alone belongs to no stack, so to no audit log)."""
    if not stack:
        return
    from podium.gateway_access import report_action
    from podium.stack import load_stack

    problem = report_action(load_stack(stack), action, target, detail)
    if problem:
        err.print(f"warning: {problem}", markup=False)


def _bytes_progress(label: str) -> Progress:
    return Progress(
        TextColumn(label),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=err,
        transient=True,
    )


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    raise AssertionError


@app.command()
def push(
    path: Annotated[
        # A str, not a Path: typer would turn "" into "." before it could be refused.
        str,
        typer.Argument(help="Model file, or a directory (safetensors + tokenizer)."),
    ],
    name: Annotated[str, typer.Option("--name", help="Model name, e.g. tinyllama.")],
    version: Annotated[str, typer.Option("--version", help="Version tag, e.g. v1.")],
    fmt: Annotated[
        str | None,
        typer.Option(
            "--format", help="gguf, safetensors, skops, joblib or onnx; guessed from the file names."
        ),
    ] = None,
    trusted: Annotated[
        bool,
        typer.Option(
            "--trusted", help="Allow pickle-based files (joblib, pkl): they run code on load."
        ),
    ] = False,
    trusted_types: Annotated[
        list[str] | None,
        typer.Option(
            "--trusted-type", help="A type a skops file may hold beyond skops' safe list (repeat)."
        ),
    ] = None,
    stack: StackOpt = None,
    registry: RegistryOpt = None,
    insecure: InsecureOpt = False,
    ca: CaOpt = None,
) -> None:
    """Push a model version as one OCI artifact; prints its manifest digest last."""
    reg = connect(stack, registry, insecure, ca)
    with err.status(f"pushing {name}:{version} to {reg.address}"):
        digest = reg.push(path, name, version, fmt, trusted, trusted_types or [])
    err.print(f"pushed {name}:{version}")
    _audit(stack, "model.push", f"{name}:{version}", {"digest": digest})
    print(digest)


@app.command()
def pull(
    ref: Annotated[str, typer.Argument(help="NAME:VERSION, NAME:ALIAS or NAME@sha256:DIGEST.")],
    to: Annotated[Path, typer.Option("--to", help="Directory the model's files go into.")],
    stack: StackOpt = None,
    registry: RegistryOpt = None,
    insecure: InsecureOpt = False,
    ca: CaOpt = None,
    dataset: Annotated[bool, typer.Option(
        "--dataset", help="REF names a fine-tuning dataset (datasets/NAME), not a model.")] = False,
) -> None:
    """Pull a model, verifying every file's digest; resumes an interrupted pull."""
    from podium.registry.ref import DatasetRef

    reg = connect(stack, registry, insecure, ca)
    kind = DatasetRef if dataset else ModelRef
    model = kind.parse(ref)
    # Resolve once, then pull by digest: an alias moved meanwhile cannot mix two versions.
    manifest = reg.manifest(model)
    total = sum(int(layer["size"]) for layer in manifest.data.get("layers", []))
    with _bytes_progress(f"pulling {model}") as bar:
        task = bar.add_task("pull", total=total)
        pinned = kind(model.name, digest=manifest.digest)
        dest = reg.pull(pinned, to, lambda n: bar.advance(task, n))
    err.print(f"pulled {model} ({manifest.digest})")
    print(dest)


@app.command("ls")
def ls(
    name: Annotated[str | None, typer.Argument(help="Only this model.")] = None,
    stack: StackOpt = None,
    registry: RegistryOpt = None,
    insecure: InsecureOpt = False,
    ca: CaOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """List models and their versions and aliases."""
    tags = connect(stack, registry, insecure, ca).ls(name)
    if as_json:
        print(json.dumps([t.__dict__ for t in tags], indent=2))
        return
    grouped: dict[tuple[str, str], list[str]] = {}
    for t in tags:
        grouped.setdefault((t.name, t.digest), []).append(t.tag)
    table = Table(title_justify="left")
    for column in ("model", "tags", "digest"):
        table.add_column(column)
    for (model_name, digest), names in grouped.items():
        table.add_row(model_name, ", ".join(names), digest[:19])
    Console(highlight=False).print(table)


@app.command()
def show(
    ref: Annotated[str, typer.Argument(help="NAME:VERSION, NAME:ALIAS or NAME@sha256:DIGEST.")],
    stack: StackOpt = None,
    registry: RegistryOpt = None,
    insecure: InsecureOpt = False,
    ca: CaOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Show a model version: digest, size, format, files and aliases."""
    info = connect(stack, registry, insecure, ca).show(ModelRef.parse(ref))
    if as_json:
        print(json.dumps(info.to_dict(), indent=2))
        return
    out = Console(highlight=False)
    rows: list[tuple[str, Any]] = [
        ("model", ref),
        ("digest", info.digest),
        ("size", _size(info.size)),
        ("format", info.format),
        ("tags", ", ".join(info.tags)),
        ("aliases", ", ".join(info.aliases) or "-"),
        ("trusted", "yes" if info.trust.get("trusted") else "no"),
    ]
    for side in ("inputs", "outputs"):
        tensors = (info.signature or {}).get(side, [])
        rows.append((side, "; ".join(f"{t['name']} {t['datatype']} {t['shape']}" for t in tensors)
                     or "-"))
    rows += _lineage_rows(info.lineage)
    for key, value in rows:
        # Never wrapped: a digest split across lines cannot be copied.
        out.print(f"{key:8} {value}", markup=False, soft_wrap=True)
    table = Table("file", "size", "sha256", title_justify="left")
    for f in info.files:
        table.add_row(f["path"], _size(int(f["size"])), f["sha256"][:16])
    out.print(table)


def _lineage_rows(lineage: dict[str, Any] | None) -> list[tuple[str, Any]]:
    """What a fine-tuned model was made from, as `show` prints it; nothing for a pushed one."""
    if not lineage:
        return []
    base, data = lineage.get("base", {}), lineage.get("dataset", {})
    hyper = lineage.get("hyperparameters", {})
    return [
        ("base", f"{base.get('model', '?')} {base.get('digest', '?')}"),
        ("dataset", f"{data.get('name', '?')} {data.get('digest', '?')}"),
        ("trained", " ".join(f"{k}={v}" for k, v in sorted(hyper.items())) or "-"),
        ("trainer", lineage.get("trainer", "?")),
    ]


@app.command()
def tag(
    ref: Annotated[
        str, typer.Argument(help="NAME:VERSION (or an alias, or a digest) to point at.")
    ],
    alias: Annotated[str, typer.Argument(help="Alias to set or move, e.g. stable or canary.")],
    stack: StackOpt = None,
    registry: RegistryOpt = None,
    insecure: InsecureOpt = False,
    ca: CaOpt = None,
) -> None:
    """Point an alias at a model version (moving it if it pointed elsewhere)."""
    model = ModelRef.parse(ref)
    digest = connect(stack, registry, insecure, ca).tag(model, alias)
    _audit(stack, "model.tag", f"{model.name}:{alias}", {"digest": digest})
    print(f"{model.name}:{alias} -> {digest}")


@app.command()
def rm(
    ref: Annotated[str, typer.Argument(help="NAME:VERSION or NAME@sha256:DIGEST to delete.")],
    stack: StackOpt = None,
    registry: RegistryOpt = None,
    insecure: InsecureOpt = False,
    ca: CaOpt = None,
) -> None:
    """Delete a model version by digest, with every alias pointing at it."""
    model = ModelRef.parse(ref)
    digest, tags = connect(stack, registry, insecure, ca).rm(model)
    _audit(stack, "model.rm", f"{model.name}@{digest}", {"tags": list(tags)})
    print(f"removed {model.name}@{digest} (tags: {', '.join(tags) or '-'})")


@app.command("make-tiny")
def make_tiny(
    out: Annotated[Path, typer.Argument(help="Where to write the model (file or directory).")],
    kind: Annotated[
        str, typer.Option("--kind", help="gguf, gguf-embedding, hf (safetensors + tokenizer), sklearn or onnx.")
    ],
    seed: Annotated[
        int, typer.Option("--seed", help="Random seed, so the weights are reproducible.")
    ] = 0,
    size: Annotated[
        str, typer.Option("--size", help="tiny (a few MB) or, for gguf and hf, 1b.")
    ] = "tiny",
    gguf: Annotated[
        Path | None, typer.Option("--gguf", help="For hf: also write this GGUF with llama.cpp's converter.")
    ] = None,
) -> None:
    """Write a tiny random-weight model for the lab and tests (no download)."""
    # Imported here: it needs the optional model libraries (gguf, numpy, safetensors, skops).
    from podium.models.tiny import make_tiny as make

    if gguf is not None and kind != "hf":
        raise InvalidInput(f"--gguf converts hf models, not kind {kind!r}; drop --gguf or use --kind hf.")
    # make_tiny checks the kind itself and names the valid ones.
    print(made := make(kind, out, seed=seed, size=size))  # type: ignore[arg-type]
    if gguf is not None:
        from podium.finetune.convert import base_to_gguf

        print(base_to_gguf(made, gguf))


def register(root: typer.Typer) -> None:
    """Add `podium model` to the root app."""
    root.add_typer(app, name="model")
