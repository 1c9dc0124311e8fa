"""Schemathesis against the gateway's own OpenAPI document: no input gets a 5xx."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.fixtures_engines import (
    EngineServer,
    engine_dir,
    llama_server,
    llama_server_bin,
    mlserver,
    tiny_gguf,
    tiny_sklearn,
)
from tests.fixtures_gateway import GatewayFactory, gateways, http, models_for

__all__ = ["engine_dir", "gateways", "llama_server", "llama_server_bin", "mlserver", "tiny_gguf",
           "tiny_sklearn"]

pytestmark = pytest.mark.engines
SCHEMATHESIS = Path(sys.executable).with_name("schemathesis")


def test_openapi_document_is_served(gateways: GatewayFactory, llama_server: EngineServer) -> None:
    gw = gateways.start(models=models_for(llama_server.url, llama_server.model))
    # The document names the models served, so it is for key holders only.
    assert http("GET", gw.url + "/openapi.json")[0] == 401
    status, _, body = http("GET", gw.url + "/openapi.json", key=gw.new_key("docs"))
    assert status == 200 and b'"/v1/chat/completions"' in body


@pytest.mark.skipif(not SCHEMATHESIS.exists() and not shutil.which("schemathesis"),
                    reason="schemathesis is not installed (pip install schemathesis)")
def test_no_generated_request_gets_a_server_error(
        gateways: GatewayFactory, llama_server: EngineServer, mlserver: EngineServer,
        tmp_path: Path) -> None:
    gw = gateways.start(models=models_for(llama_server.url, llama_server.model,
                                          mlserver.url, mlserver.model))
    key = gw.new_key("fuzz")
    status, _, document = http("GET", gw.url + "/openapi.json", key=key)
    assert status == 200, document
    (tmp_path / "openapi.json").write_bytes(document)
    run = subprocess.run(
        [str(SCHEMATHESIS if SCHEMATHESIS.exists() else "schemathesis"), "run",
         "openapi.json", "--url", gw.url, "--checks", "not_a_server_error",
         "--header", f"Authorization: Bearer {key}",
         "--phases", "examples,coverage,fuzzing", "--max-examples", "15",
         "--max-time", "30", "--workers", "1", "--request-timeout", "30",
         "--seed", "1", "--generation-database", "none", "--no-color"],
        capture_output=True, text=True, timeout=240, cwd=tmp_path,
        env={**os.environ, "SCHEMATHESIS_TELEMETRY": "false", "NO_COLOR": "1"},
    )
    report = run.stdout[-6000:] + run.stderr[-2000:]
    assert run.returncode == 0, report + "\n" + gw.log()[-3000:]
