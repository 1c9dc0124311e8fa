"""Shapes and random weights of Podium's tiny llama models, shared by the GGUF and HF writers."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from podium.errors import InvalidInput
from podium.models.tiny_vocab import Vocab, build_vocab


@dataclass(frozen=True)
class LlamaShape:
    """The dimensions that define a llama model."""

    n_embd: int
    n_layer: int
    n_ff: int
    n_head: int
    n_head_kv: int
    n_ctx: int
    vocab_pad_to: int

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head


SIZES: dict[str, LlamaShape] = {
    # A few MB: loads in well under a second and generates hundreds of tokens/s on a CPU.
    "tiny": LlamaShape(n_embd=256, n_layer=2, n_ff=512, n_head=4, n_head_kv=2, n_ctx=2048,
                       vocab_pad_to=0),
    # TinyLlama's body (about 1.0e9 parameters, 2 GB in f16) for GPU benchmarks; the
    # vocabulary is padded to 32000 so the output layer costs what a real one does.
    "1b": LlamaShape(n_embd=2048, n_layer=22, n_ff=5632, n_head=32, n_head_kv=4, n_ctx=4096,
                     vocab_pad_to=32000),
}

WEIGHT_STD = 0.02
# A wider output layer spreads the logits of real tokens far from the zero logit
# of the special and reserved tokens (see llama_weights).
OUTPUT_STD = 0.2


def shape_for(size: str) -> LlamaShape:
    """The shape called `size`, or InvalidInput naming the valid sizes."""
    if size not in SIZES:
        raise InvalidInput(
            f"size {size!r} is not a tiny model size; use one of: {', '.join(SIZES)}."
        )
    return SIZES[size]


def vocab_for(shape: LlamaShape) -> Vocab:
    return build_vocab(pad_to=shape.vocab_pad_to)


@dataclass(frozen=True)
class Weight:
    """One tensor: its HF name, GGUF name, numpy shape and how to make its values."""

    hf_name: str
    gguf_name: str
    shape: tuple[int, ...]
    make: Callable[[], npt.NDArray[np.float16]]
    is_norm: bool
    # Heads whose rows llama.cpp expects interleaved differently from HF (q and k).
    rope_heads: int = 0

    @property
    def n_elements(self) -> int:
        return int(np.prod(self.shape))


def gguf_layout(weight: Weight, values: npt.NDArray[np.float16]) -> npt.NDArray[np.float16]:
    """Reorder q/k rows from HF's rotary layout to llama.cpp's, as convert_hf_to_gguf does."""
    if not weight.rope_heads:
        return values
    h = weight.rope_heads
    rows = values.shape[0]
    return (
        values.reshape(h, 2, rows // h // 2, *values.shape[1:]).swapaxes(1, 2).reshape(values.shape)
    )


def _normal(seed: int, index: int, shape: tuple[int, ...],
            zero_rows: tuple[int, ...] = (),
            std: float = WEIGHT_STD) -> Callable[[], npt.NDArray[np.float16]]:
    def make() -> npt.NDArray[np.float16]:
        # One generator per tensor: values do not depend on write order, and a
        # tensor can be made (and dropped) on its own, so memory stays at one tensor.
        rng = np.random.default_rng([seed, index])
        values = rng.standard_normal(shape, dtype=np.float32)
        values *= std
        out = values.astype(np.float16)
        if zero_rows:
            out[list(zero_rows)] = 0
        return out

    return make


def _ones(shape: tuple[int, ...]) -> Callable[[], npt.NDArray[np.float16]]:
    return lambda: np.ones(shape, dtype=np.float16)


def llama_weights(shape: LlamaShape, vocab: Vocab, seed: int) -> Iterator[Weight]:
    """All tensors of the model in a fixed order.

    Output rows of the special tokens and of the non-ASCII byte tokens are
    zero, so their logit is exactly 0 while the random rows spread around it:
    greedy decoding never picks them and sampling almost never does. Replies
    are then printable ASCII (no broken UTF-8 in streams) and long enough to
    measure, since end-of-text does not cut them short.
    """
    n_vocab = len(vocab.tokens)
    d, kv = shape.n_embd, shape.n_head_kv * shape.head_dim
    counter = itertools.count()
    yield Weight("model.embed_tokens.weight", "token_embd.weight", (n_vocab, d),
                 _normal(seed, next(counter), (n_vocab, d)), False)
    for i in range(shape.n_layer):
        hf, gg = f"model.layers.{i}", f"blk.{i}"
        yield Weight(f"{hf}.input_layernorm.weight", f"{gg}.attn_norm.weight", (d,),
                     _ones((d,)), True)
        yield Weight(f"{hf}.self_attn.q_proj.weight", f"{gg}.attn_q.weight", (d, d),
                     _normal(seed, next(counter), (d, d)), False, shape.n_head)
        yield Weight(f"{hf}.self_attn.k_proj.weight", f"{gg}.attn_k.weight", (kv, d),
                     _normal(seed, next(counter), (kv, d)), False, shape.n_head_kv)
        yield Weight(f"{hf}.self_attn.v_proj.weight", f"{gg}.attn_v.weight", (kv, d),
                     _normal(seed, next(counter), (kv, d)), False)
        yield Weight(f"{hf}.self_attn.o_proj.weight", f"{gg}.attn_output.weight", (d, d),
                     _normal(seed, next(counter), (d, d)), False)
        yield Weight(f"{hf}.post_attention_layernorm.weight", f"{gg}.ffn_norm.weight", (d,),
                     _ones((d,)), True)
        ff = shape.n_ff
        yield Weight(f"{hf}.mlp.gate_proj.weight", f"{gg}.ffn_gate.weight", (ff, d),
                     _normal(seed, next(counter), (ff, d)), False)
        yield Weight(f"{hf}.mlp.up_proj.weight", f"{gg}.ffn_up.weight", (ff, d),
                     _normal(seed, next(counter), (ff, d)), False)
        yield Weight(f"{hf}.mlp.down_proj.weight", f"{gg}.ffn_down.weight", (d, ff),
                     _normal(seed, next(counter), (d, ff)), False)
    yield Weight("model.norm.weight", "output_norm.weight", (d,), _ones((d,)), True)
    silent = vocab.special_ids + vocab.unprintable_byte_ids
    yield Weight("lm_head.weight", "output.weight", (n_vocab, d),
                 _normal(seed, next(counter), (n_vocab, d), silent, OUTPUT_STD), False)
