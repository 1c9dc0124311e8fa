"""Make tiny random-weight models (GGUF, HF llama, scikit-learn, ONNX) for labs, tests and benchmarks."""

from __future__ import annotations

from pathlib import Path
from typing import Literal, get_args

from podium.errors import InvalidInput

TinyKind = Literal["gguf", "gguf-embedding", "hf", "sklearn", "onnx"]
KINDS: tuple[str, ...] = get_args(TinyKind)


def make_tiny(kind: TinyKind, out: Path, *, seed: int = 0, size: str = "tiny") -> Path:
    """Write a tiny model of `kind` to `out`; the same seed and size give the same bytes.

    Args:
        kind: "gguf" (a .gguf file for llama.cpp), "gguf-embedding" (the same, as an
            embedding model), "hf" (a transformers/vLLM directory), "sklearn" (a .skops
            file plus a .json sidecar) or "onnx" (a small CNN on 8x8 digits, .onnx plus sidecar).
        out: the file (gguf, sklearn, onnx) or directory (hf) to write; parents are created.
        seed: seeds the random weights (and the sklearn classifier).
        size: "tiny" (a few MB) or, for gguf and hf, "1b" (about 1e9 parameters, f16).

    Example:
        >>> make_tiny("gguf", Path("/tmp/tiny.gguf"))  # doctest: +SKIP
        PosixPath('/tmp/tiny.gguf')
    """
    if kind not in KINDS:
        raise InvalidInput(
            f"kind {kind!r} is not a tiny model kind; use one of: {', '.join(KINDS)}."
        )
    if seed < 0 or seed >= 2**32:
        raise InvalidInput(f"seed {seed} is out of range; use an integer from 0 to {2**32 - 1}.")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    # Imports are per kind: each writer pulls in its own heavy libraries.
    if kind in ("gguf", "gguf-embedding"):
        from podium.models.tiny_gguf import write_gguf

        return write_gguf(out, seed=seed, size=size, embedding=kind == "gguf-embedding")
    if kind == "hf":
        from podium.models.tiny_hf import write_hf

        return write_hf(out, seed=seed, size=size)
    if size != "tiny":
        raise InvalidInput(f"size {size!r} does not exist for {kind} models; use size 'tiny'.")
    if kind == "onnx":
        from podium.models.tiny_onnx import write_onnx

        return write_onnx(out, seed=seed, size=size)
    from podium.models.tiny_sklearn import write_sklearn

    return write_sklearn(out, seed=seed, size=size)
