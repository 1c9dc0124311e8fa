"""bench/oip_grpc.py runs end to end in a small configuration and every call through it works.

Speed is not asserted (that is the benchmark's report); what is checked is that it measures
real ModelInfer calls, direct and through the gateway, with no errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.engines
def test_the_grpc_benchmark_runs_small_without_a_single_error(tmp_path: Path) -> None:
    out = tmp_path / "figures.json"
    run = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "oip_grpc.py"), "--concurrency", "1,4",
         "--requests", "40", "--rounds", "1", "--max-seconds", "10", "--json", str(out)],
        capture_output=True, text=True, timeout=300, cwd=ROOT,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    figures = json.loads(out.read_text())
    for name in ("direct", "podium", "podium-rest"):
        for c in ("1", "4"):
            cell = figures[name][c]
            assert cell["errors"] == 0 and cell["requests"] == 40, (name, c, cell)
    assert "x direct" in run.stdout
