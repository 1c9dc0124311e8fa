"""Run one of llama.cpp's converters as a script, naming the GPT-2 byte-level pre-tokenizer it cannot
recognise by hash in a vocabulary of its own (Podium's tiny models).

Run with the trainer venv's Python, which has no Podium: this file imports only the standard
library and the converters' own code.

    python llamacpp_convert.py CONVERTERS/convert_hf_to_gguf.py MODEL_DIR --outfile model.gguf
"""

from __future__ import annotations

import json
import runpy
import sys
from pathlib import Path
from typing import Any


def gpt2_byte_level(model_dir: Path) -> bool:
    """Whether tokenizer.json splits text exactly as GPT-2 does (one ByteLevel step, its regex)."""
    try:
        tokenizer = json.loads((model_dir / "tokenizer.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    pre = tokenizer.get("pre_tokenizer") or {}
    return (tokenizer.get("model", {}).get("type") == "BPE" and pre.get("type") == "ByteLevel"
            and pre.get("use_regex", True) and tokenizer.get("normalizer") is None)


def main() -> None:
    script = Path(sys.argv[1]).resolve()
    sys.argv = [str(script), *sys.argv[2:]]
    sys.path[:0] = [str(script.parent / "gguf-py"), str(script.parent)]
    from conversion import base

    recognised = base.TextModel.get_vocab_base_pre

    # The converter knows a pre-tokenizer by the hash of one text's token ids, so a vocabulary
    # trained here has no entry even where its splitting is GPT-2's; llama.cpp's "gpt-2" is that
    # splitting. Every other tokenizer still meets the converter's own refusal.
    def vocab_base_pre(self: Any, tokenizer: Any) -> str:
        try:
            return str(recognised(self, tokenizer))
        except NotImplementedError:
            if gpt2_byte_level(Path(self.dir_model)):
                return "gpt-2"
            raise

    base.TextModel.get_vocab_base_pre = vocab_base_pre
    runpy.run_path(str(script), run_name="__main__")


if __name__ == "__main__":
    main()
