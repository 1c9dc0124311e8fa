"""An adapter model behind the real gateway: llama-server started with the command the engine
role renders (`--lora` over the base's GGUF) answers under the adapter model's own name, with its
own key access (a key for the base alone may not use it) and its own usage records."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
import yaml

from podium import engine_files
from podium.finetune import train
from podium.finetune.convert import OFFLINE_ENV, lora_to_gguf
from podium.plan.actions import make_plan
from podium.stack import load_stack
from podium.stack.versions import load_versions
from tests.fixtures_engines import START_TIMEOUT_S, EngineServer, serve_on_free_port, stop
from tests.fixtures_gateway import GatewayFactory, gateways, usage_rows
from tests.test_adapter_render import DIGESTS
from tests.test_finetune_train import (
    PROMPT,
    base_and_adapter_answers,
    base_gguf,
    chat_dataset,
    converters,
    llama_server_bin,
    tiny_hf,
    trainer_python,
)

__all__ = ["base_gguf", "converters", "gateways", "llama_server_bin", "tiny_hf", "trainer_python"]

TRAIN_BUDGET_S = 180
STACK: dict[str, Any] = {
    "name": "adaptergw",
    "nodes": [{"name": "ctrl", "address": "192.0.2.10"}, {"name": "cpu1", "address": "192.0.2.11"}],
    "network": {"admin_sources": ["192.0.2.0/28"]},
    "registry": {"node": "ctrl", "port": 5000},
    "models": [
        {"name": "tiny-llama", "version": "1", "format": "gguf", "source": "tiny:gguf"},
        {"name": "tiny-helper", "base": "tiny-llama:1", "adapter": "helper:2"},
    ],
    "engines": [
        {"name": name, "kind": "llamacpp", "model": model, "nodes": ["cpu1"], "port": port,
         "args": {"ctx-size": 512, "parallel": 1, "threads": 2}}
        for name, model, port in [("llama", "tiny-llama:1", 8080), ("helper", "tiny-helper:2", 8180)]
    ],
    "gateway": {"nodes": ["ctrl"]},
}


@pytest.fixture(scope="module")
def lora_gguf(tiny_hf: Path, trainer_python: Path, converters: Path,
              tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An adapter trained as tests/test_finetune_train.py trains one (well under a minute)."""
    folder = tmp_path_factory.mktemp("adapter")
    data = chat_dataset(folder / "chat.jsonl")
    done = subprocess.run(
        [str(trainer_python), train.__file__, "--base", str(tiny_hf), "--data", str(data),
         "--out", str(folder / "peft"), "--epochs", "5", "--lr", "0.003", "--rank", "8"],
        capture_output=True, text=True, timeout=TRAIN_BUDGET_S, env={**OFFLINE_ENV, "PATH": ""})
    assert done.returncode == 0, done.stderr[-3000:]
    return lora_to_gguf(folder / "peft", tiny_hf, folder / "helper.gguf", python=trainer_python,
                        converters=converters)


def _plan(tmp_path: Path) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The llama.cpp replicas and the gateway's models, as `podium up` would lay them down."""
    folder = tmp_path / STACK["name"]
    folder.mkdir()
    (folder / "stack.yaml").write_text(yaml.safe_dump(STACK, sort_keys=False))
    actions = {a.component: a for a in make_plan(load_stack(str(folder)), load_versions(), {}, DIGESTS)}
    return actions["engine-llamacpp"].settings["replicas"], actions["gateway"].settings["models"]


def _as_rendered(replica: dict[str, Any], local: dict[str, Path], binary: Path, port: int) -> list[str]:
    """The replica's unit command with the node's paths mapped to this machine's files, and on
    127.0.0.1: every other word (--lora included) is the rendered one."""
    argv, _ = engine_files.launch("llamacpp", replica)
    mapped = [str(local.get(w, w)) for w in argv]
    mapped[0] = str(binary)
    mapped[mapped.index("--host") + 1] = "127.0.0.1"
    mapped[mapped.index("--port") + 1] = str(port)
    return mapped


@pytest.fixture()
def engines(tmp_path: Path, llama_server_bin: Path, base_gguf: Path, lora_gguf: Path
            ) -> Iterator[tuple[dict[str, EngineServer], dict[str, Any], list[str]]]:
    replicas, gateway_models = _plan(tmp_path)
    helper = next(r for r in replicas if r["engine"] == "helper")
    local = {engine_files.weights_link(helper): base_gguf,
             engine_files.weights_link(helper["adapter"]): lora_gguf}
    started: dict[str, EngineServer] = {}
    try:
        for replica in replicas:
            started[replica["model"]] = serve_on_free_port(
                lambda port, r=replica: _as_rendered(r, local, llama_server_bin, port),
                replica["model"], tmp_path / f"{replica['engine']}.log", START_TIMEOUT_S, busy="bind")
        yield started, gateway_models, engine_files.launch("llamacpp", helper)[0]
    finally:
        for server in started.values():
            stop(server.process)


@pytest.mark.engines
def test_the_adapter_model_answers_under_its_own_name_key_and_usage(
        gateways: GatewayFactory, engines: tuple[dict[str, EngineServer], dict[str, Any], list[str]]) -> None:
    servers, gateway_models, helper_argv = engines
    assert "--lora" in helper_argv
    # The gateway's models as the plan writes them, each pointed at its engine on 127.0.0.1.
    models = {name: {**entry, "replicas": [servers[name].url]} for name, entry in gateway_models.items()}
    assert sorted(models) == ["tiny-helper", "tiny-llama"]
    gw = gateways.start(models=models)
    client = openai.OpenAI(base_url=gw.url + "/v1", api_key=gw.new_key("everyone"), max_retries=0)

    plain, tuned = base_and_adapter_answers(client, "tiny-llama", "tiny-helper")
    print(f"base: {plain!r}\nadapter: {tuned!r}", file=sys.stderr)

    base_only = openai.OpenAI(base_url=gw.url + "/v1", max_retries=0,
                              api_key=gw.new_key("base-only", models=("tiny-llama",)))
    # The gateway answers a model a key may not use as it answers an unknown one (404), so a key
    # cannot learn which other models exist: the adapter model gets no access of its base's.
    with pytest.raises(openai.NotFoundError, match="may not use it"):
        base_only.chat.completions.create(model="tiny-helper", messages=PROMPT, max_tokens=4)  # type: ignore[arg-type]
    assert base_only.chat.completions.create(model="tiny-llama", messages=PROMPT, max_tokens=4)  # type: ignore[arg-type]

    rows = usage_rows(gw.store, "everyone")
    by_model = {r["model"]: r for r in rows}
    assert sorted(by_model) == ["tiny-helper", "tiny-llama"], rows
    assert by_model["tiny-helper"]["completion_tokens"] > 0
    assert [r["model"] for r in usage_rows(gw.store, "base-only") if r["status"] == 200] == ["tiny-llama"]
