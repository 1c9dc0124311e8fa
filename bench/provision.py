"""Provisioning figures for the lab: image build (cold and cached), machines up to SSH, `podium up`
cold and with nothing to do, and `podium verify`. Each is printed in seconds and as a ratio to a
baseline measured in the same run: one SSH round trip (`ssh node true`) to the same machines.

    .venv/bin/python bench/provision.py [--stack tests/stacks/labhost] [--cold-image] [--machines libvirt]
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from rich.console import Console  # noqa: E402

from podium.lab import up as lab  # noqa: E402
from podium.lab.image import build_rootfs  # noqa: E402
from podium.stack import load_stack  # noqa: E402

PODIUM = [sys.executable, "-m", "podium"]


def timed(label: str, func, figures: dict[str, float]):  # type: ignore[no-untyped-def]
    start = time.perf_counter()
    result = func()
    figures[label] = time.perf_counter() - start
    return result


def run(*args: str) -> str:
    done = subprocess.run([*PODIUM, *args], capture_output=True, text=True, cwd=REPO)
    if done.returncode != 0:
        raise SystemExit(f"podium {' '.join(args)} failed:\n{done.stderr[-2000:]}")
    return done.stdout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stack", default=str(REPO / "tests/stacks/labhost"))
    parser.add_argument("--cold-image", action="store_true", help="also build the image into an empty cache")
    parser.add_argument("--machines", default=None, help="nspawn (default) or libvirt")
    args = parser.parse_args()
    quiet = Console(stderr=True, quiet=True)
    figures: dict[str, float] = {}
    stack = load_stack(args.stack)
    if args.cold_image:
        with tempfile.TemporaryDirectory(dir="/var/tmp") as cache:
            timed("image build, cold", lambda: build_rootfs(Path(cache), console=quiet), figures)
    timed("image build, cached", lambda: build_rootfs(console=quiet), figures)
    parts = lab.lab_parts(stack, args.machines)
    try:
        timed("machines up to SSH", lambda: lab.machines_up(parts, quiet), figures)
        lab.write_lab_inventory(stack)
        node = stack.nodes[-1].name
        baseline = []
        for _ in range(5):
            start = time.perf_counter()
            run("lab", "ssh", node, "--stack", args.stack, "--", "true")
            baseline.append(time.perf_counter() - start)
        base = sorted(baseline)[2]
        cold = timed("podium up, cold", lambda: run("up", args.stack), figures)
        warm = timed("podium up, nothing to do", lambda: run("up", args.stack), figures)
        timed("podium verify", lambda: run("verify", args.stack, "--json"), figures)
    finally:
        lab.lab_down(stack, quiet, args.machines)
    changes = {k: re.findall(r"changes: (\d+)", v)[-1] for k, v in (("cold", cold), ("warm", warm))}
    print(f"machines: {len(parts.specs)} ({parts.driver.name}); baseline `podium lab ssh NODE true` = {base:.2f} s")
    print(f"{'figure':32} {'seconds':>9} {'× baseline':>11}")
    for label, seconds in figures.items():
        print(f"{label:32} {seconds:9.2f} {seconds / base:11.1f}")
    print(f"changes: cold {changes['cold']}, nothing to do {changes['warm']}")


if __name__ == "__main__":
    main()
