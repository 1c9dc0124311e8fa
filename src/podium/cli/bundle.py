"""`podium bundle STACK --out DIR` and `podium bundle verify DIR`: the artifact set an
air-gapped site installs from, and its check."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.console import Console

from podium.errors import InvalidInput, PodiumError

out = Console(highlight=False)
err = Console(stderr=True, highlight=False)


def bundle(
    target: str = typer.Argument(..., help="A stack folder or stack.yaml, or `verify`."),
    folder: Path | None = typer.Argument(None, help="With `verify`: the bundle folder to check."),
    out_dir: Path | None = typer.Option(None, "--out", help="The bundle folder to write (made if missing)."),
    lab_image: bool | None = typer.Option(
        None, "--lab-image/--no-lab-image",
        help="Also carry debootstrap's base system for the lab image (default: stacks with lab machines).",
    ),
    as_json: bool = typer.Option(False, "--json", help="Print what was done (or found) as JSON."),
) -> None:
    """Write everything STACK installs into one folder, or check such a folder.

    `podium bundle STACK --out DIR` writes a signed apt repository, hashed wheelhouses, the
    llama-server and Podium wheels, the models as OCI layouts, slots for what cannot be
    fetched here and manifest.json; a second run with nothing changed downloads nothing.
    `podium bundle verify DIR` exits 0, or 1 naming each changed, missing or extra file and
    each slot file whose sha256 is not the one stacks/versions.yaml records.

    Example: podium bundle stacks/lab --out /srv/bundle && podium bundle verify /srv/bundle
    """
    if target == "verify":
        if folder is None:
            raise InvalidInput("podium bundle verify needs the bundle folder: podium bundle verify DIR")
        _verify(folder, as_json)
        return
    if folder is not None:
        raise InvalidInput(f"unexpected argument {str(folder)!r}; write the bundle folder as --out {folder}")
    if out_dir is None:
        raise InvalidInput(f"podium bundle {target} needs --out DIR, the folder to write the bundle into")
    from podium.bundle.build import build_bundle
    from podium.stack.loader import load_stack
    from podium.stack.versions import load_versions

    report = build_bundle(load_stack(target), load_versions(), out_dir, lab_image=lab_image)
    if as_json:
        out.print_json(json.dumps({**report.__dict__, "folder": str(report.folder)}))


def _verify(folder: Path, as_json: bool) -> None:
    from podium.bundle.manifest import recorded_slots, verify
    from podium.stack.versions import load_versions

    if not folder.is_dir():
        raise InvalidInput(f"bundle folder {folder} does not exist; give the folder `podium bundle --out` wrote")
    problems = verify(folder, recorded_slots(folder, load_versions()))
    if as_json:
        out.print_json(json.dumps({"ok": not problems, "problems": [p.__dict__ for p in problems]}))
    if problems:
        for problem in problems:
            err.print(f"bad: {problem}", markup=False, soft_wrap=True)
        raise PodiumError(f"bundle {folder} has {len(problems)} bad file(s); rebuild it or replace them")
    if not as_json:
        out.print(f"bundle {folder}: every file matches its manifest and the version table")


def register(app: typer.Typer) -> None:
    app.command("bundle")(bundle)
