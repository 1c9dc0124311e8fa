"""Tiny models: deterministic bytes, and files their readers (gguf, safetensors, skops) accept."""

from __future__ import annotations

import doctest
import hashlib
import json
from pathlib import Path
from typing import Any

import gguf
import numpy as np
import pytest
import skops.io
from safetensors.numpy import load_file

from podium.errors import InvalidInput
from podium.models import make_tiny, tiny_vocab
from podium.models.tiny_gguf import served_name
from podium.models.tiny_llama import SIZES, gguf_layout, llama_weights, vocab_for
from podium.models.tiny_sklearn import sidecar_path
from podium.models.tiny_vocab import CHAT_TEMPLATE, IM_END


def digest(path: Path) -> str:
    """sha256 of a file, or of every file (name and bytes) in a folder."""
    h = hashlib.sha256()
    for f in sorted(path.rglob("*")) if path.is_dir() else [path]:
        if f.is_file():
            h.update(f.relative_to(path).as_posix().encode() if path.is_dir() else b"")
            h.update(f.read_bytes())
    return h.hexdigest()


@pytest.mark.parametrize("kind, name", [("gguf", "m.gguf"), ("hf", "m"), ("sklearn", "m.skops"),
                                        ("onnx", "m.onnx")])
def test_same_seed_same_bytes_other_seed_other_bytes(kind: str, name: str, tmp_path: Path
                                                     ) -> None:
    first = digest(make_tiny(kind, tmp_path / "a" / name, seed=7))  # type: ignore[arg-type]
    again = digest(make_tiny(kind, tmp_path / "b" / name, seed=7))  # type: ignore[arg-type]
    other = digest(make_tiny(kind, tmp_path / "c" / name, seed=8))  # type: ignore[arg-type]
    assert first == again
    assert first != other


def test_gguf_reads_back_as_a_llama_model_with_a_chat_tokenizer(tmp_path: Path) -> None:
    reader = gguf.GGUFReader(make_tiny("gguf", tmp_path / "tiny.gguf"))
    fields = reader.fields

    def value(key: str) -> Any:
        return fields[key].contents()

    shape = SIZES["tiny"]
    assert value("general.architecture") == "llama"
    assert value("general.name") == served_name("tiny")
    assert value("llama.block_count") == shape.n_layer
    assert value("llama.embedding_length") == shape.n_embd
    assert value("llama.attention.head_count_kv") == shape.n_head_kv
    assert value("tokenizer.ggml.model") == "gpt2"
    assert value("tokenizer.chat_template") == CHAT_TEMPLATE
    tokens = value("tokenizer.ggml.tokens")
    assert isinstance(tokens, list)
    assert len(tokens) == value("llama.vocab_size") == len(value("tokenizer.ggml.token_type"))
    assert tokens[value("tokenizer.ggml.eos_token_id")] == IM_END
    assert value("tokenizer.ggml.merges")
    names = {t.name: t for t in reader.tensors}
    assert len(names) == 3 + 9 * shape.n_layer
    assert names["blk.0.attn_norm.weight"].tensor_type == gguf.GGMLQuantizationType.F32
    assert names["blk.0.attn_q.weight"].tensor_type == gguf.GGMLQuantizationType.F16
    assert size_mb(tmp_path / "tiny.gguf") < 10


def test_gguf_embedding_is_the_llama_model_named_apart_with_mean_pooling(tmp_path: Path
                                                                        ) -> None:
    chat = gguf.GGUFReader(make_tiny("gguf", tmp_path / "chat.gguf")).fields
    embed = gguf.GGUFReader(make_tiny("gguf-embedding", tmp_path / "embed.gguf")).fields
    # llama.cpp pools per-token states into one vector only when the model says how.
    assert embed["llama.pooling_type"].contents() == int(gguf.PoolingType.MEAN)
    assert "llama.pooling_type" not in chat
    assert embed["general.name"].contents() == served_name("tiny", embedding=True) != (
        chat["general.name"].contents())
    assert embed["llama.embedding_length"].contents() == SIZES["tiny"].n_embd


def size_mb(path: Path) -> float:
    return path.stat().st_size / 1e6


def test_gguf_and_hf_hold_the_same_weights(tmp_path: Path) -> None:
    reader = gguf.GGUFReader(make_tiny("gguf", tmp_path / "tiny.gguf", seed=3))
    hf = load_file(str(make_tiny("hf", tmp_path / "hf", seed=3) / "model.safetensors"))
    in_gguf = {t.name: np.asarray(t.data) for t in reader.tensors}
    shape = SIZES["tiny"]
    for w in llama_weights(shape, vocab_for(shape), seed=3):
        expected = gguf_layout(w, hf[w.hf_name]).astype(in_gguf[w.gguf_name].dtype)
        np.testing.assert_array_equal(in_gguf[w.gguf_name].reshape(w.shape), expected,
                                      err_msg=w.gguf_name)


def test_hf_folder_parses(tmp_path: Path) -> None:
    out = make_tiny("hf", tmp_path / "tiny-hf")
    config = json.loads((out / "config.json").read_text())
    weights = load_file(str(out / "model.safetensors"))
    assert config["architectures"] == ["LlamaForCausalLM"]
    assert weights["model.embed_tokens.weight"].shape == (config["vocab_size"],
                                                          config["hidden_size"])
    assert len([k for k in weights if k.startswith("model.layers.")]) == (
        9 * config["num_hidden_layers"])
    assert weights["lm_head.weight"].dtype == np.float16
    tokenizer_config = json.loads((out / "tokenizer_config.json").read_text())
    assert tokenizer_config["chat_template"] == CHAT_TEMPLATE
    assert json.loads((out / "generation_config.json").read_text())["eos_token_id"] == (
        config["eos_token_id"])
    tokenizers = pytest.importorskip("tokenizers")
    tok = tokenizers.Tokenizer.from_file(str(out / "tokenizer.json"))
    text = "Hello world, the model answers.<|im_end|>"
    ids = tok.encode(text).ids
    assert ids[-1] == config["eos_token_id"]
    assert tok.decode(ids, skip_special_tokens=False) == text


def test_sklearn_model_predicts_its_sidecar_example(tmp_path: Path) -> None:
    model_file = make_tiny("sklearn", tmp_path / "iris.skops")
    sidecar = json.loads(sidecar_path(model_file).read_text())
    assert skops.io.get_untrusted_types(file=model_file) == sidecar["trusted_types"] == []
    model = skops.io.load(model_file, trusted=sidecar["trusted_types"])
    example = np.array(sidecar["example_input"])
    assert example.shape[1] == sidecar["input"]["shape"][1]
    assert model.predict(example).tolist() == sidecar["expected_prediction"]


def test_onnx_model_passes_the_checker_and_reads_digits(tmp_path: Path) -> None:
    import onnx
    from onnx.reference import ReferenceEvaluator
    from sklearn.datasets import load_digits

    model_file = make_tiny("onnx", tmp_path / "digits.onnx")
    sidecar = json.loads(sidecar_path(model_file).read_text())
    model = onnx.load(str(model_file))
    onnx.checker.check_model(model, full_check=True)
    assert [node.op_type for node in model.graph.node][:2] == ["Conv", "Relu"]
    assert model_file.stat().st_size < 64 * 1024
    run = ReferenceEvaluator(model).run
    example = np.array(sidecar["example_input"], dtype=np.float32)
    assert example.shape == (1, 1, 8, 8) and sidecar["input"]["shape"] == [-1, 1, 8, 8]
    label, probabilities = run(None, {"image": example})
    assert label.ravel().tolist() == sidecar["expected_prediction"] == [sidecar["true_label"]]
    assert probabilities.shape == (1, 10) and abs(float(probabilities.sum()) - 1) < 1e-5
    # A classifier, not random weights: it reads most of scikit-learn's digits right.
    digits = load_digits()
    labels, _ = run(None, {"image": (digits.images[:, None] / 16.0).astype(np.float32)})
    assert (labels.ravel() == digits.target).mean() > 0.9


def test_vocab_docstring_example_runs() -> None:
    assert doctest.testmod(tiny_vocab).failed == 0


def test_one_billion_shape_is_about_a_billion_parameters() -> None:
    shape = SIZES["1b"]
    total = sum(w.n_elements for w in llama_weights(shape, vocab_for(shape), seed=0))
    assert 0.9e9 < total < 1.2e9


@pytest.mark.parametrize("kind, size, field", [
    ("tflite", "tiny", "kind"), ("gguf", "7b", "size"), ("sklearn", "1b", "size"),
    ("onnx", "1b", "size"),
])
def test_bad_kind_or_size_names_the_field(kind: str, size: str, field: str, tmp_path: Path
                                          ) -> None:
    with pytest.raises(InvalidInput, match=f"^{field} "):
        make_tiny(kind, tmp_path / "x", size=size)  # type: ignore[arg-type]
    assert not (tmp_path / "x").exists()
