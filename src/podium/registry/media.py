"""Podium's OCI media types for models, and the model format a path is guessed to hold."""

from __future__ import annotations

from pathlib import Path
from typing import Final, Literal, get_args

from podium.errors import InvalidInput

ModelFormat = Literal["gguf", "safetensors", "skops", "joblib", "onnx"]
FORMATS: Final[tuple[str, ...]] = get_args(ModelFormat)

OCI_MANIFEST: Final = "application/vnd.oci.image.manifest.v1+json"
CONFIG_MEDIA_TYPE: Final = "application/vnd.podium.model.config.v1+json"
# Files that ride along with the weights (tokenizer, config.json, vocab): kept, not interpreted.
OTHER_FILE_MEDIA_TYPE: Final = "application/vnd.podium.model.file"
ANNOTATION_TITLE: Final = "org.opencontainers.image.title"
ANNOTATION_NAME: Final = "org.opencontainers.image.ref.name"
ANNOTATION_VERSION: Final = "org.opencontainers.image.version"
ANNOTATION_FORMAT: Final = "vnd.podium.model.format"

# Loading any of these runs pickle, i.e. arbitrary code chosen by whoever wrote the file.
PICKLE_SUFFIXES: Final = frozenset({".joblib", ".pkl", ".pickle", ".bin", ".pt", ".pth", ".ckpt"})

_SUFFIX_FORMAT: Final[dict[str, ModelFormat]] = {
    ".gguf": "gguf",
    ".safetensors": "safetensors",
    ".skops": "skops",
    ".joblib": "joblib",
    ".pkl": "joblib",
    ".pickle": "joblib",
    ".onnx": "onnx",
}


def model_media_type(fmt: str) -> str:
    """The artifact type of a model of this format, also the media type of its weight files."""
    return f"application/vnd.podium.model.{fmt}"


def layer_media_type(relpath: str, fmt: str) -> str:
    """Weight files carry the format's media type; anything beside them is a plain model file."""
    suffix = Path(relpath).suffix.lower()
    if _SUFFIX_FORMAT.get(suffix) == fmt:
        return model_media_type(fmt)
    return OTHER_FILE_MEDIA_TYPE


def check_format(fmt: str) -> ModelFormat:
    """The format as given on the command line or in a stack, refused when unknown."""
    if fmt not in FORMATS:
        raise InvalidInput(
            f"--format {fmt!r} is not a model format Podium knows; use one of {', '.join(FORMATS)}"
        )
    return fmt  # type: ignore[return-value]


def guess_format(path: Path, files: list[str]) -> ModelFormat:
    """The format of a model file, or of a directory from the weight files it holds.

    path: the file or directory given to `podium model push`.
    files: its files as relative paths (the file's own name for a single file).
    """
    found = sorted(
        {_SUFFIX_FORMAT[s] for f in files if (s := Path(f).suffix.lower()) in _SUFFIX_FORMAT}
    )
    if len(found) == 1:
        return found[0]
    known = ", ".join(sorted(_SUFFIX_FORMAT))
    if not found:
        raise InvalidInput(
            f"cannot tell the model format of {str(path)!r} from its file names (none ends in "
            f"{known}); pass --format {'|'.join(FORMATS)}"
        )
    raise InvalidInput(
        f"{str(path)!r} holds files of several model formats ({', '.join(found)}); "
        f"pass --format to say which one it is"
    )
