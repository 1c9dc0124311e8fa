"""Model references, format guessing and file-name checks: pure functions, no registry."""

from __future__ import annotations

from pathlib import Path

import pytest

from podium.errors import InvalidInput
from podium.registry import ModelRef
from podium.registry.artifact import model_manifest, safe_relpath
from podium.registry.media import guess_format, layer_media_type
from podium.registry.trust import check_trust

DIGEST = "sha256:" + "ab" * 32


def test_refs_parse_to_tag_or_digest() -> None:
    assert ModelRef.parse("tinyllama:v1") == ModelRef("tinyllama", tag="v1")
    assert ModelRef.parse(f"tinyllama@{DIGEST}") == ModelRef("tinyllama", digest=DIGEST)
    assert ModelRef.parse("tinyllama:stable").repository == "models/tinyllama"
    assert ModelRef.parse(f"tinyllama@{DIGEST}").reference == DIGEST


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("tinyllama", "has no version"),
        ("TinyLlama:v1", "model name"),
        ("tiny:-v1", "not a valid tag"),
        ("tiny@sha256:xyz", "sha256:<64 hex digits>"),
        ("../x:v1", "model name"),
    ],
)
def test_bad_refs_are_refused(text: str, words: str) -> None:
    with pytest.raises(InvalidInput, match=words):
        ModelRef.parse(text)


def test_format_is_guessed_from_file_names() -> None:
    assert guess_format(Path("m.gguf"), ["m.gguf"]) == "gguf"
    hf = ["config.json", "model.safetensors", "tokenizer.json"]
    assert guess_format(Path("hf"), hf) == "safetensors"
    assert guess_format(Path("c.pkl"), ["c.pkl"]) == "joblib"
    assert guess_format(Path("d.onnx"), ["d.onnx"]) == "onnx"
    with pytest.raises(InvalidInput, match="--format"):
        guess_format(Path("weights"), ["weights.tflite"])
    with pytest.raises(InvalidInput, match="several model formats"):
        guess_format(Path("mix"), ["a.gguf", "b.safetensors"])


def test_weights_and_side_files_get_their_media_types() -> None:
    assert layer_media_type("model.safetensors", "safetensors") == (
        "application/vnd.podium.model.safetensors"
    )
    assert layer_media_type("tokenizer.json", "safetensors") == "application/vnd.podium.model.file"


@pytest.mark.parametrize("title", ["../x", "/etc/passwd", "a/../../x", "", "a\\..\\x"])
def test_file_names_leaving_the_folder_are_refused(title: str) -> None:
    with pytest.raises(InvalidInput):
        safe_relpath(title)


def test_nested_file_names_are_kept() -> None:
    assert safe_relpath("tokenizer/vocab.txt") == "tokenizer/vocab.txt"


def test_pytorch_pickles_inside_a_directory_need_trust() -> None:
    files = ["config.json", "pytorch_model.bin"]
    with pytest.raises(InvalidInput, match="pytorch_model.bin"):
        check_trust(Path("hf"), files, "safetensors")
    assert check_trust(Path("hf"), files, "safetensors", trusted=True).pickle_files == (
        "pytorch_model.bin",
    )


def test_manifest_bytes_are_deterministic() -> None:
    a = model_manifest("m", "v1", "gguf", b"{}", [])
    b = model_manifest("m", "v1", "gguf", b"{}", [])
    assert a == b
    assert b'"artifactType":"application/vnd.podium.model.gguf"' in a
