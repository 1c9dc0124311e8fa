"""Write a tiny llama-architecture GGUF with random weights that llama.cpp loads and serves."""

from __future__ import annotations

import os
from pathlib import Path

import gguf
import numpy as np

from podium.models.tiny_llama import gguf_layout, llama_weights, shape_for, vocab_for
from podium.models.tiny_vocab import CHAT_TEMPLATE

ARCH = "llama"
TOKEN_NORMAL = int(gguf.TokenType.NORMAL)
TOKEN_CONTROL = int(gguf.TokenType.CONTROL)
TOKEN_UNUSED = int(gguf.TokenType.UNUSED)


def served_name(size: str, *, embedding: bool = False) -> str:
    """The model name written into general.name (what an engine reports)."""
    return f"podium-{'embed' if embedding else 'llama'}-{size}"


def write_gguf(out: Path, *, seed: int, size: str, embedding: bool = False) -> Path:
    """Write the model to `out` one tensor at a time, so a 1B model needs one tensor of memory.

    Args:
        out: the .gguf file to create (replaced atomically when complete).
        seed: seeds every weight; the same seed gives the same bytes.
        size: a key of podium.models.tiny_llama.SIZES ("tiny" or "1b").
        embedding: mark the model as an embedding model (mean pooling), so llama-server
            started with --embeddings answers /v1/embeddings with vectors of n_embd floats.

    Example:
        >>> write_gguf(Path("/tmp/m.gguf"), seed=0, size="tiny")  # doctest: +SKIP
    """
    shape = shape_for(size)
    vocab = vocab_for(shape)
    weights = list(llama_weights(shape, vocab, seed))

    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    writer = gguf.GGUFWriter(tmp, ARCH)
    writer.add_name(served_name(size, embedding=embedding))
    writer.add_file_type(int(gguf.LlamaFileType.MOSTLY_F16))
    writer.add_context_length(shape.n_ctx)
    writer.add_embedding_length(shape.n_embd)
    writer.add_block_count(shape.n_layer)
    writer.add_feed_forward_length(shape.n_ff)
    writer.add_head_count(shape.n_head)
    writer.add_head_count_kv(shape.n_head_kv)
    writer.add_rope_dimension_count(shape.head_dim)
    writer.add_rope_freq_base(10000.0)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_vocab_size(len(vocab.tokens))
    writer.add_uint32("podium.seed", seed)
    writer.add_string("podium.size", size)
    if embedding:
        # How llama.cpp turns per-token states into one vector; without it (pooling "none")
        # llama-server refuses the OpenAI embeddings endpoint.
        writer.add_pooling_type(gguf.PoolingType.MEAN)

    specials = set(vocab.special_ids)
    first_reserved = len(vocab.tokens) - vocab.n_reserved
    types = [
        TOKEN_UNUSED if i >= first_reserved else TOKEN_CONTROL if i in specials else TOKEN_NORMAL
        for i in range(len(vocab.tokens))
    ]
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("gpt-2")
    writer.add_token_list(list(vocab.tokens))
    writer.add_token_types(types)
    writer.add_token_scores([0.0] * len(vocab.tokens))
    writer.add_token_merges(list(vocab.merges))
    writer.add_bos_token_id(vocab.bos_id)
    writer.add_eos_token_id(vocab.eos_id)
    writer.add_pad_token_id(vocab.eos_id)
    writer.add_add_bos_token(False)
    writer.add_chat_template(CHAT_TEMPLATE)

    for w in weights:
        dtype = np.dtype(np.float32 if w.is_norm else np.float16)
        writer.add_tensor_info(w.gguf_name, w.shape, dtype, w.n_elements * dtype.itemsize)
    try:
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        for w in weights:
            values = gguf_layout(w, w.make())
            # llama.cpp wants norm weights in f32; matrices stay f16.
            writer.write_tensor_data(values.astype(np.float32) if w.is_norm else values)
        writer.close()
        tmp.replace(out)
    finally:
        tmp.unlink(missing_ok=True)
    return out
