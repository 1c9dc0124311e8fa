"""A small byte-level BPE vocabulary trained here, shared by the tiny GGUF and HF models."""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass

# Special tokens follow ChatML so that llama.cpp recognises the chat template
# and transformers' chat helpers work without a custom template engine.
BOS = "<|endoftext|>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
SPECIAL_TOKENS = (BOS, IM_START, IM_END)

CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

# The training text is fixed so the vocabulary (and so every digest) is stable.
_CORPUS = """
Podium turns a declaration of a private appliance into running, verified infrastructure.
The team must run models on its own hardware, often without internet access. What they
get at the end is an endpoint with keys, quotas, metering and dashboards, serving language
models and small predictive models, on a stack they can apply, upgrade and roll back.
Hello! How are you today? I am fine, thank you. The quick brown fox jumps over the lazy dog.
Once upon a time there was a little model that answered every question with a story.
It said: the weather is nice, the sun is shining, and the birds are singing in the trees.
Numbers like 1, 2, 3, 10, 42, 100 and 2024 appear in logs, tables and requests.
A user asks a question and the assistant writes an answer, one token at a time.
def main(): return "ok"  # code, paths like /v1/chat/completions and JSON {"role": "user"}
"""

# GPT-2's pre-tokenizer, restricted to ASCII classes because `re` has no \p{L}.
_PRETOKENIZE = re.compile(
    r"'s|'t|'re|'ve|'m|'ll|'d| ?[A-Za-z]+| ?[0-9]+| ?[^\sA-Za-z0-9]+|\s+(?!\S)|\s+"
)


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible map from bytes to printable characters (byte-level BPE)."""
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    chars = printable[:]
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return {b: chr(c) for b, c in zip(printable, chars, strict=True)}


@dataclass(frozen=True)
class Vocab:
    """Tokens in id order, BPE merges in rank order, and the special token ids."""

    tokens: tuple[str, ...]
    merges: tuple[str, ...]
    bos_id: int
    eos_id: int
    n_special: int
    n_reserved: int

    @property
    def special_ids(self) -> tuple[int, ...]:
        """Ids of the control tokens (ChatML markers and reserved padding)."""
        return tuple(range(len(self.tokens) - self.n_special - self.n_reserved, len(self.tokens)))

    @property
    def unprintable_byte_ids(self) -> tuple[int, ...]:
        """Byte tokens other than printable ASCII and newline (parts of UTF-8 or controls)."""
        byte_of = {c: b for b, c in bytes_to_unicode().items()}
        return tuple(
            i for i in range(256)
            if not (0x20 <= byte_of[self.tokens[i]] < 0x7F or byte_of[self.tokens[i]] == 0x0A)
        )


def _train_merges(n_merges: int) -> list[tuple[str, str]]:
    table = bytes_to_unicode()
    words = Counter(
        tuple(table[b] for b in piece.encode("utf-8"))
        for piece in _PRETOKENIZE.findall(_CORPUS)
    )
    merges: list[tuple[str, str]] = []
    for _ in range(n_merges):
        pairs: Counter[tuple[str, str]] = Counter()
        for word, count in words.items():
            for pair in zip(word, word[1:], strict=False):
                pairs[pair] += count
        if not pairs:
            break
        # Ties break on the pair itself so the result never depends on dict order.
        best, _count = min(pairs.items(), key=lambda item: (-item[1], item[0]))
        merges.append(best)
        joined = best[0] + best[1]
        merged: Counter[tuple[str, ...]] = Counter()
        for word, n in words.items():
            out: list[str] = []
            i = 0
            while i < len(word):
                if i + 1 < len(word) and (word[i], word[i + 1]) == best:
                    out.append(joined)
                    i += 2
                else:
                    out.append(word[i])
                    i += 1
            merged[tuple(out)] += n
        words = merged
    return merges


def build_vocab(n_merges: int = 400, pad_to: int = 0) -> Vocab:
    """Train the BPE and lay out ids: 256 bytes, merges, ChatML markers, reserved padding.

    Args:
        n_merges: at most this many merges (the corpus may support fewer).
        pad_to: pad the vocabulary with unused reserved tokens up to this size,
            so a benchmark model has a realistic output layer.

    Example:
        >>> v = build_vocab(); v.tokens[v.eos_id]
        '<|im_end|>'
    """
    byte_tokens = list(bytes_to_unicode().values())
    merges = _train_merges(n_merges)
    tokens = byte_tokens + [a + b for a, b in merges]
    # Two merges can spell the same string ("a"+"bc", "ab"+"c"); keep ids unique.
    unique = list(dict.fromkeys(tokens))
    first_special = len(unique)
    unique.extend(SPECIAL_TOKENS)
    n_reserved = max(0, pad_to - len(unique))
    unique.extend(f"<|reserved_{i}|>" for i in range(n_reserved))
    return Vocab(
        tokens=tuple(unique),
        merges=tuple(f"{a} {b}" for a, b in merges),
        bos_id=first_special,
        eos_id=first_special + 2,
        n_special=len(SPECIAL_TOKENS),
        n_reserved=n_reserved,
    )
