"""Write a tiny Hugging Face llama folder (config, safetensors, tokenizer) with random weights."""

from __future__ import annotations

import json
import os
import shutil
import struct
from pathlib import Path
from typing import Any

from podium.models.tiny_gguf import served_name
from podium.models.tiny_llama import LlamaShape, Weight, llama_weights, shape_for, vocab_for
from podium.models.tiny_vocab import BOS, CHAT_TEMPLATE, IM_END, SPECIAL_TOKENS, Vocab

# safetensors wants the header padded so tensor data starts 8-byte aligned.
_ALIGN = 8


def write_hf(out: Path, *, seed: int, size: str) -> Path:
    """Write the model directory `out`, streaming weights one tensor at a time.

    Args:
        out: the directory to create (replaced atomically when complete).
        seed: seeds every weight; the same seed gives the same bytes.
        size: a key of podium.models.tiny_llama.SIZES ("tiny" or "1b").

    Example:
        >>> write_hf(Path("/tmp/tiny-hf"), seed=0, size="tiny")  # doctest: +SKIP
    """
    shape = shape_for(size)
    vocab = vocab_for(shape)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        write_safetensors(tmp / "model.safetensors", list(llama_weights(shape, vocab, seed)))
        _write_json(tmp / "config.json", _config(shape, vocab, size))
        _write_json(tmp / "generation_config.json", {
            "bos_token_id": vocab.bos_id, "eos_token_id": vocab.eos_id,
            "pad_token_id": vocab.eos_id, "do_sample": True, "temperature": 0.8,
        })
        _write_json(tmp / "tokenizer.json", tokenizer_json(vocab))
        _write_json(tmp / "tokenizer_config.json", _tokenizer_config(vocab, shape))
        _write_json(tmp / "special_tokens_map.json", {
            "bos_token": BOS, "eos_token": IM_END, "pad_token": IM_END,
        })
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def write_safetensors(path: Path, weights: list[Weight]) -> None:
    """The safetensors format by hand (8-byte header length, JSON header, raw data).

    safetensors' own writer needs every tensor in memory at once, which a 1B
    model makes expensive; the format is simple enough to stream.
    """
    header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for w in weights:
        nbytes = w.n_elements * 2
        header[w.hf_name] = {"dtype": "F16", "shape": list(w.shape),
                             "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % _ALIGN)
    with path.open("wb") as f:
        f.write(struct.pack("<Q", len(raw)))
        f.write(raw)
        for w in weights:
            w.make().astype("<f2", copy=False).tofile(f)


def tokenizer_json(vocab: Vocab) -> dict[str, Any]:
    """A byte-level BPE tokenizer.json equivalent to the GGUF's gpt2 tokenizer."""
    byte_level = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True,
                  "use_regex": True}
    specials = set(vocab.special_ids)
    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": [
            {"id": i, "content": vocab.tokens[i], "single_word": False, "lstrip": False,
             "rstrip": False, "normalized": False, "special": True}
            for i in sorted(specials)
        ],
        "normalizer": None,
        "pre_tokenizer": byte_level,
        "post_processor": {**byte_level, "trim_offsets": False},
        "decoder": byte_level,
        "model": {
            "type": "BPE", "dropout": None, "unk_token": None,
            "continuing_subword_prefix": None, "end_of_word_suffix": None,
            "fuse_unk": False, "byte_fallback": False, "ignore_merges": False,
            "vocab": {t: i for i, t in enumerate(vocab.tokens) if i not in specials},
            "merges": list(vocab.merges),
        },
    }


def _config(shape: LlamaShape, vocab: Vocab, size: str) -> dict[str, Any]:
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "_name_or_path": served_name(size),
        "hidden_size": shape.n_embd,
        "intermediate_size": shape.n_ff,
        "num_hidden_layers": shape.n_layer,
        "num_attention_heads": shape.n_head,
        "num_key_value_heads": shape.n_head_kv,
        "head_dim": shape.head_dim,
        "max_position_embeddings": shape.n_ctx,
        "vocab_size": len(vocab.tokens),
        "hidden_act": "silu",
        "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0,
        "rope_scaling": None,
        "attention_bias": False,
        "mlp_bias": False,
        "tie_word_embeddings": False,
        "initializer_range": 0.02,
        "bos_token_id": vocab.bos_id,
        "eos_token_id": vocab.eos_id,
        "pad_token_id": vocab.eos_id,
        "torch_dtype": "float16",
        "use_cache": True,
    }


def _tokenizer_config(vocab: Vocab, shape: LlamaShape) -> dict[str, Any]:
    return {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": BOS,
        "eos_token": IM_END,
        "pad_token": IM_END,
        "additional_special_tokens": list(SPECIAL_TOKENS[1:]),
        "add_bos_token": False,
        "add_eos_token": False,
        "clean_up_tokenization_spaces": False,
        "model_max_length": shape.n_ctx,
        "chat_template": CHAT_TEMPLATE,
    }


def _write_json(path: Path, data: dict[str, Any]) -> None:
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
