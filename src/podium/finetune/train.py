"""Train a LoRA adapter on a chat dataset and print each step's loss as a JSON line.

Run with the trainer venv's Python (torch, transformers, peft), which has no Podium: this file
imports nothing of Podium's, so a node runs it as a plain script.

    python train.py --base MODEL_DIR --data chat.jsonl --out ADAPTER_DIR --epochs 3 --lr 1e-3 --rank 8
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

# The projections of a llama block; an adapter on all of them learns most from little data.
TARGET_MODULES = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
IGNORED = -100


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", type=Path, required=True, help="Hugging Face model folder")
    parser.add_argument("--data", type=Path, required=True, help="chat JSONL, already checked")
    parser.add_argument("--out", type=Path, required=True, help="folder for the PEFT adapter")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-tokens", type=int, default=256, help="per conversation")
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


def emit(event: str, **fields: Any) -> None:
    # Flushed per line: the caller streams these to the operator as they come.
    print(json.dumps({"event": event, **fields}), flush=True)


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    started = time.monotonic()
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(args.seed)
    tokenizer = AutoTokenizer.from_pretrained(args.base)
    # CPU training wants float32: float16 matmuls are slow there and lose small gradients.
    model = AutoModelForCausalLM.from_pretrained(args.base, dtype=torch.float32)
    lora = LoraConfig(r=args.rank, lora_alpha=2 * args.rank, lora_dropout=0.0,
                      target_modules=TARGET_MODULES, task_type="CAUSAL_LM")
    model = get_peft_model(model, lora)
    examples = [_encode(tokenizer, json.loads(line)["messages"], args.max_tokens)
                for line in args.data.read_text(encoding="utf-8").splitlines() if line.strip()]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=args.lr)
    order = torch.Generator().manual_seed(args.seed)
    emit("start", examples=len(examples), epochs=args.epochs, lr=args.lr, rank=args.rank,
         trainable=sum(p.numel() for p in model.parameters() if p.requires_grad),
         threads=torch.get_num_threads())
    model.train()
    step = 0
    for epoch in range(1, args.epochs + 1):
        permutation = torch.randperm(len(examples), generator=order).tolist()
        for start in range(0, len(examples), args.batch_size):
            batch = [examples[i] for i in permutation[start:start + args.batch_size]]
            ids, mask, labels = _pad(torch, batch, pad)
            loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            step += 1
            emit("step", step=step, epoch=epoch, loss=round(loss.item(), 5),
                 elapsed_s=round(time.monotonic() - started, 2))
    args.out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(args.out)
    emit("done", steps=step, seconds=round(time.monotonic() - started, 2), adapter=str(args.out),
         bytes=sum(f.stat().st_size for f in args.out.iterdir() if f.is_file()))
    return 0


def _encode(tokenizer: Any, messages: list[dict[str, str]], max_tokens: int) -> list[int]:
    text = tokenizer.apply_chat_template(messages, tokenize=False)
    ids: list[int] = tokenizer(text, add_special_tokens=False)["input_ids"]
    return ids[:max_tokens]


def _pad(torch: Any, batch: list[list[int]], pad: int) -> tuple[Any, Any, Any]:
    width = max(len(ids) for ids in batch)
    ids = torch.full((len(batch), width), pad, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    labels = torch.full((len(batch), width), IGNORED, dtype=torch.long)
    for row, tokens in enumerate(batch):
        ids[row, :len(tokens)] = torch.tensor(tokens)
        mask[row, :len(tokens)] = 1
        labels[row, :len(tokens)] = torch.tensor(tokens)
    return ids, mask, labels


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    sys.exit(main(sys.argv[1:]))
