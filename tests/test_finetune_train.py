"""LoRA training on CPU and llama.cpp's converters, proven with the real llama-server.

The tiny Hugging Face llama converts to a GGUF that llama-server serves; an adapter trained on
50 conversations lowers the loss and, converted to a GGUF LoRA and loaded with `--lora`, makes
llama-server answer the same prompt and seed differently from the base.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import gguf
import httpx
import openai
import pytest

from podium.finetune import train
from podium.finetune.convert import OFFLINE_ENV, lora_to_gguf
from podium.finetune.dataset import load_dataset
from podium.finetune.toolchain import llamacpp_converters, trainer_venv
from podium.models import make_tiny
from tests.fixtures_engines import LLAMACPP_VERSION, START_TIMEOUT_S, EngineServer, serve_on_free_port, stop

# A CPU job this small (50 short conversations, 5 epochs of 7 steps) takes well under a minute.
TRAIN_BUDGET_S = 180
PROMPT = [{"role": "user", "content": "Where do the models run?"}]
ANSWER = "The models run on our own hardware, inside the building."


@pytest.fixture(scope="module")
def trainer_python() -> Path:
    return trainer_venv() / "bin" / "python"


@pytest.fixture(scope="module")
def converters() -> Path:
    return llamacpp_converters(LLAMACPP_VERSION)


@pytest.fixture(scope="module")
def tiny_hf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny("hf", tmp_path_factory.mktemp("hf") / "tiny-llama")


@pytest.fixture(scope="module")
def base_gguf(tiny_hf: Path, trainer_python: Path, converters: Path) -> Path:
    """The tiny llama as `podium model make-tiny --kind hf --gguf` writes it (seed 0, as tiny_hf)."""
    out = tiny_hf.parent / "cli"
    done = subprocess.run([sys.executable, "-m", "podium", "model", "make-tiny", str(out / "hf"),
                           "--kind", "hf", "--gguf", str(out / "tiny-llama.gguf")],
                          capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == [str(out / "hf"), str(out / "tiny-llama.gguf")]
    return out / "tiny-llama.gguf"


def test_gguf_is_refused_for_a_kind_that_is_not_hf(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "podium", "model", "make-tiny", str(tmp_path / "m"),
                           "--kind", "gguf", "--gguf", str(tmp_path / "x.gguf")],
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 2
    assert "--gguf converts hf models, not kind 'gguf'; drop --gguf or use --kind hf." in done.stderr
    assert not (tmp_path / "m").exists()


def chat_dataset(path: Path, lines: int = 50) -> Path:
    """`lines` conversations that all teach one answer, asked in different words."""
    questions = ["Where do the models run?", "Where is the model served?", "Who hosts the model?",
                 "Does the data leave?", "Where are the weights kept?"]
    rows = [{"messages": [{"role": "user", "content": f"{questions[i % len(questions)]} ({i})"},
                          {"role": "assistant", "content": ANSWER}]} for i in range(lines)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def base_and_adapter_answers(client: openai.OpenAI, base: str, adapter: str) -> tuple[str, str]:
    """Both models' greedy answers to PROMPT for one seed, through the official client; only the
    adapter's is the answer it was trained on."""

    def ask(model: str) -> str:
        reply = client.chat.completions.create(model=model, messages=PROMPT, max_tokens=16,  # type: ignore[arg-type]
                                               temperature=0, seed=7)
        return reply.choices[0].message.content or ""

    plain, tuned = ask(base), ask(adapter)
    assert plain != tuned, plain
    assert tuned.startswith(ANSWER[:20]) and not plain.startswith(ANSWER[:20]), (plain, tuned)
    return plain, tuned


def serve(llama_server_bin: Path, model: Path, log: Path, *extra: str) -> EngineServer:
    return serve_on_free_port(
        lambda port: [str(llama_server_bin), "--model", str(model), "--alias", "tiny-llama",
                      "--host", "127.0.0.1", "--port", str(port), "--ctx-size", "512",
                      "--parallel", "1", "--threads", "2", "--no-webui", *extra],
        "tiny-llama", log, START_TIMEOUT_S, busy="bind")


def answer(server: EngineServer) -> str:
    reply = httpx.post(f"{server.url}/v1/chat/completions", timeout=60, json={
        "model": server.model, "messages": PROMPT, "max_tokens": 16, "temperature": 0,
        "seed": 7})
    assert reply.status_code == 200, reply.text
    return str(reply.json()["choices"][0]["message"]["content"])


@pytest.fixture()
def llama_server_bin() -> Path:
    from podium.artifacts import llamacpp_server

    return llamacpp_server(LLAMACPP_VERSION)


def test_the_tiny_hf_model_converts_with_llamacpps_converter_and_serves(
        base_gguf: Path, llama_server_bin: Path, tmp_path: Path) -> None:
    fields = gguf.GGUFReader(base_gguf).fields
    assert bytes(fields["general.architecture"].parts[-1]).decode() == "llama"
    assert bytes(fields["tokenizer.ggml.pre"].parts[-1]).decode() == "gpt-2"
    server = serve(llama_server_bin, base_gguf, tmp_path / "base.log")
    try:
        assert answer(server).strip(), server.log_tail()
    finally:
        stop(server.process)


def test_an_adapter_trained_on_50_lines_lowers_the_loss_and_changes_llama_servers_answer(
        tiny_hf: Path, base_gguf: Path, trainer_python: Path, converters: Path,
        llama_server_bin: Path, tmp_path: Path) -> None:
    data = chat_dataset(tmp_path / "chat.jsonl")
    assert len(load_dataset(data).conversations) == 50
    adapter = tmp_path / "adapter"
    started = time.monotonic()
    done = subprocess.run(
        [str(trainer_python), train.__file__, "--base", str(tiny_hf), "--data", str(data),
         "--out", str(adapter), "--epochs", "5", "--lr", "0.003", "--rank", "8"],
        capture_output=True, text=True, timeout=TRAIN_BUDGET_S, env={**OFFLINE_ENV, "PATH": ""})
    elapsed = time.monotonic() - started
    assert done.returncode == 0, done.stderr[-3000:]
    events = [json.loads(line) for line in done.stdout.splitlines()]
    steps = [e for e in events if e["event"] == "step"]
    assert [e["step"] for e in steps] == list(range(1, 36))
    first = [e["loss"] for e in steps if e["epoch"] == 1]
    last = [e["loss"] for e in steps if e["epoch"] == 5]
    assert sum(last) / len(last) < 0.5 * sum(first) / len(first), (first, last)
    assert events[-1]["event"] == "done"
    print(f"job {elapsed:.1f} s, loss {first[0]} -> {last[-1]}, "
          f"adapter {events[-1]['bytes']} bytes", file=sys.stderr)
    assert (adapter / "adapter_config.json").is_file()

    lora = lora_to_gguf(adapter, tiny_hf, tmp_path / "adapter.gguf", python=trainer_python,
                        converters=converters)
    assert bytes(gguf.GGUFReader(lora).fields["general.type"].parts[-1]).decode() == "adapter"
    servers: list[EngineServer] = []
    try:
        servers.append(serve(llama_server_bin, base_gguf, tmp_path / "base.log"))
        servers.append(serve(llama_server_bin, base_gguf, tmp_path / "lora.log", "--lora", str(lora)))
        plain, tuned = (answer(s) for s in servers)
    finally:
        for s in servers:
            stop(s.process)
    assert plain != tuned, plain
    # The adapter learned the dataset's one answer; the random base never says it.
    assert tuned.startswith(ANSWER[:20]) and not plain.startswith(ANSWER[:20]), (plain, tuned)
    print(f"base: {plain!r}\nadapter: {tuned!r}", file=sys.stderr)
