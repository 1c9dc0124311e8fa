"""Refuse model files that would run foreign code when loaded, unless the stack trusts them."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from podium.errors import InvalidInput, PodiumError
from podium.registry.media import PICKLE_SUFFIXES


@dataclass(frozen=True)
class Trust:
    """What was checked and allowed for one model; recorded in the model's config blob."""

    trusted: bool = False
    trusted_types: tuple[str, ...] = ()
    # Files that run pickle on load and were let through because of `trusted`.
    pickle_files: tuple[str, ...] = ()
    # Types found in skops files beyond skops' safe defaults (all of them in trusted_types).
    skops_types: tuple[str, ...] = field(default=())

    def to_dict(self) -> dict[str, Any]:
        return {
            "trusted": self.trusted,
            "trusted_types": list(self.trusted_types),
            "pickle_files": list(self.pickle_files),
            "skops_types": list(self.skops_types),
        }


def untrusted_skops_types(path: Path) -> list[str]:
    """The types in a skops file that skops does not consider safe to load by default."""
    try:
        import skops.io
    except ImportError as exc:  # the models extra is optional
        raise PodiumError(
            f"checking the skops file {str(path)!r} needs the skops package; "
            "install it with: pip install 'podium[models]'"
        ) from exc
    try:
        return sorted(skops.io.get_untrusted_types(file=path))
    except Exception as exc:  # a corrupt or non-skops file raises whatever its parser raises
        raise InvalidInput(
            f"{str(path)!r} is not a readable skops file ({exc}); "
            "save the model with skops.io.dump or pass the right --format"
        ) from exc


def check_trust(
    root: Path,
    files: Sequence[str],
    fmt: str,
    *,
    trusted: bool = False,
    trusted_types: Sequence[str] = (),
) -> Trust:
    """Check a model before it is pushed and say what was allowed.

    root: the model file, or the directory holding `files`.
    files: relative paths of the model's files (just the file name for a single file).
    fmt: the model format (gguf, safetensors, skops, joblib, onnx).
    trusted: the stack marks this model trusted, so pickle-based files are allowed.
    trusted_types: types a skops file may hold beyond skops' safe defaults.

    >>> check_trust(Path("m.gguf"), ["m.gguf"], "gguf").trusted
    False
    """
    pickles = [f for f in files if Path(f).suffix.lower() in PICKLE_SUFFIXES]
    if fmt == "joblib" and not pickles:
        pickles = list(files)
    if pickles and not trusted:
        raise InvalidInput(
            f"model file {pickles[0]!r} is pickle-based ({fmt}): loading it runs any code "
            "its author put in it; save it with skops instead, or pass --trusted "
            "(trusted: true in the stack) if you trust where it came from"
        )
    allowed = set(trusted_types)
    found: set[str] = set()
    skops_files = [f for f in files if Path(f).suffix.lower() == ".skops"]
    if fmt == "skops" and not skops_files:
        skops_files = list(files)  # a skops model under another name is still checked
    for rel in skops_files:
        path = root if root.is_file() else root / rel
        types = untrusted_skops_types(path)
        refused = [t for t in types if t not in allowed]
        if refused:
            flags = " ".join(f"--trusted-type {t}" for t in refused)
            raise InvalidInput(
                f"skops file {rel!r} holds types skops does not trust by default: "
                f"{', '.join(refused)}; if you trust them, list them in the stack's "
                f"trusted_types or pass {flags}"
            )
        found.update(types)
    return Trust(
        trusted=trusted,
        trusted_types=tuple(sorted(allowed)),
        pickle_files=tuple(pickles),
        skops_types=tuple(sorted(found)),
    )
