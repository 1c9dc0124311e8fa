"""bench/usage_store.py runs end to end in a small configuration.

Speed is not asserted (that is the benchmark's report). What is checked: each of its tables
is printed, and under steady commits the store's log stays a small part of the log of the
store as it was, which never started over (a size, not a time)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_the_store_benchmark_runs_small_and_the_log_stays_bounded_under_steady_load() -> None:
    run = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "usage_store.py"), "--records", "200",
         "--tail-records", "300", "--steady-seconds", "2"],
        capture_output=True, text=True, timeout=300, cwd=ROOT,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    assert "gateway store, 16 at a time" in run.stdout
    assert "a thread checkpoints (the store now)" in run.stdout
    now = re.search(r"the store now \(1 KiB, RESTART\)\s+(\d+)\s+([\d.]+)\s.*?([\d.]+)x\s+[\d.]+x$",
                    run.stdout, re.MULTILINE)
    assert now is not None, run.stdout
    commits, log_ratio = int(now.group(1)), float(now.group(3))
    assert commits > 500, run.stdout
    assert log_ratio < 0.5, run.stdout
