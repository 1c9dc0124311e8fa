"""Convert Hugging Face models and PEFT LoRA adapters to GGUF with llama.cpp's own converters."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from podium.errors import PodiumError

ENTRY = Path(__file__).with_name("llamacpp_convert.py")
# The converters would otherwise ask the Hugging Face hub for what a local folder lacks.
OFFLINE_ENV = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1"}


def hf_to_gguf(model_dir: Path, out: Path, *, python: Path, converters: Path,
               outtype: str = "f16") -> Path:
    """Write the GGUF of the Hugging Face model folder `model_dir` to `out`.

    Args:
        model_dir: config.json, safetensors and tokenizer.json of the model.
        out: the .gguf file to write.
        python: an interpreter with torch, transformers and numpy (the trainer venv's).
        converters: the folder llamacpp_converters() returns.
        outtype: f32, f16, bf16 or q8_0, as convert_hf_to_gguf.py takes it.

    Example:
        >>> hf_to_gguf(Path("tiny-hf"), Path("tiny.gguf"), python=trainer_venv() / "bin/python",
        ...            converters=llamacpp_converters("11434.0.0"))  # doctest: +SKIP
    """
    return _convert(python, converters / "convert_hf_to_gguf.py",
                    [str(model_dir), "--outfile", str(out), "--outtype", outtype], out)


def base_to_gguf(model_dir: Path, out: Path) -> Path:
    """hf_to_gguf with the trainer venv and the converters of the pinned llama.cpp, made once here."""
    from podium.finetune.toolchain import llamacpp_converters, trainer_venv
    from podium.stack.versions import load_versions

    version = load_versions().components["engine-llamacpp"].version
    return hf_to_gguf(model_dir, out, python=trainer_venv() / "bin" / "python",
                      converters=llamacpp_converters(version))


def lora_to_gguf(adapter_dir: Path, base_dir: Path, out: Path, *, python: Path,
                 converters: Path) -> Path:
    """Write the GGUF LoRA of the PEFT adapter folder `adapter_dir`, trained on `base_dir`."""
    return _convert(python, converters / "convert_lora_to_gguf.py",
                    [str(adapter_dir), "--base", str(base_dir), "--outfile", str(out),
                     "--outtype", "f32"], out)


def _convert(python: Path, script: Path, args: list[str], out: Path) -> Path:
    out.parent.mkdir(parents=True, exist_ok=True)
    done = subprocess.run([str(python), str(ENTRY), str(script), *args], capture_output=True,
                          text=True, check=False, env={**os.environ, **OFFLINE_ENV})
    if done.returncode or not out.is_file():
        tail = (done.stderr or done.stdout).strip().splitlines()[-5:]
        raise PodiumError(f"{script.name} could not convert {args[0]} (exit {done.returncode}): "
                          + " / ".join(tail))
    return out
