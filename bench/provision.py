"""Provisioning figures for the lab: image build (cold and cached), machines up to SSH, `podium up`
cold, with nothing to do, and `--reapply` (every role run again on an unchanged lab: total and per
component, split into SSH connect, prepare (the roles' facts) and execute), and `podium verify`.
Each is printed in seconds and as a ratio to a baseline measured in the same run: one SSH round
trip (`ssh node true`) to the same machines.

By default it boots a copy of stacks/lab under a name and subnet of its own and removes it at the
end; `--running FOLDER` measures a lab already up from FOLDER instead (reapply only).

    .venv/bin/python bench/provision.py [--stack stacks/lab] [--cold-image] [--machines libvirt]
    .venv/bin/python bench/provision.py --running /tmp/lab-copy/tabc [--rounds 3]
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
sys.path.insert(0, str(REPO))

from rich.console import Console  # noqa: E402
from tests.fixtures_lab import remove_stack_state, unique_stack  # noqa: E402

from podium.lab import up as lab  # noqa: E402
from podium.lab.image import build_rootfs  # noqa: E402
from podium.stack import load_stack  # noqa: E402

PODIUM = [sys.executable, "-m", "podium"]
# "✓ gateway: changed 0 in 3.1 s (connect 0.4, prepare 2.0, execute 0.7)", as podium up reports.
COMPONENT_LINE = re.compile(r"^\S+ (?P<what>[\w -]+(?: \(remove\))?): (?:would )?changed? (?P<changes>\d+)"
                            r" in (?P<total>[\d.]+) s \((?P<phases>[^)]*)\)$")


def timed(label: str, func, figures: dict[str, float]):  # type: ignore[no-untyped-def]
    start = time.perf_counter()
    result = func()
    figures[label] = time.perf_counter() - start
    return result


def run(*args: str) -> subprocess.CompletedProcess[str]:
    # Wide enough that rich never wraps a component's line.
    env = {**os.environ, "COLUMNS": "200"}
    done = subprocess.run([*PODIUM, *args], capture_output=True, text=True, cwd=REPO, env=env)
    if done.returncode != 0:
        raise SystemExit(f"podium {' '.join(args)} failed:\n{done.stderr[-2000:]}")
    return done


def changes(done: subprocess.CompletedProcess[str]) -> str:
    return re.findall(r"changes: (\d+)", done.stdout)[-1]


def per_component(stderr: str) -> dict[str, dict[str, float]]:
    """component → {"total", "changes", and each phase} from one `podium up`'s report."""
    out: dict[str, dict[str, float]] = {}
    for line in stderr.splitlines():
        m = COMPONENT_LINE.match(line.strip())
        if not m:
            continue
        row = {"total": float(m["total"]), "changes": float(m["changes"])}
        for part in m["phases"].split(", "):
            phase, seconds = part.rsplit(" ", 1)
            row[phase] = float(seconds)
        out[m["what"]] = row
    return out


def ssh_baseline(folder: str, node: str) -> float:
    times = []
    for _ in range(5):
        start = time.perf_counter()
        run("lab", "ssh", node, "--stack", folder, "--", "true")
        times.append(time.perf_counter() - start)
    return sorted(times)[2]


def reapply(folder: str, rounds: int) -> tuple[float, subprocess.CompletedProcess[str]]:
    """The median of `rounds` runs of `podium up --reapply`, and the run that took it."""
    runs = []
    for _ in range(rounds):
        start = time.perf_counter()
        done = run("up", folder, "--reapply")
        runs.append((time.perf_counter() - start, done))
    runs.sort(key=lambda r: r[0])
    return runs[len(runs) // 2]


def print_reapply(seconds: float, done: subprocess.CompletedProcess[str]) -> None:
    rows = per_component(done.stderr)
    phases = sorted({p for row in rows.values() for p in row} - {"total", "changes"},
                    key=["connect", "prepare", "execute"].index)
    print(f"\npodium up --reapply: {seconds:.2f} s, changes: {changes(done)}")
    print(f"{'component':24} {'changes':>7} {'seconds':>8} " + " ".join(f"{p:>8}" for p in phases))
    for what, row in rows.items():
        print(f"{what:24} {row['changes']:7.0f} {row['total']:8.2f} "
              + " ".join(f"{row.get(p, 0.0):8.2f}" for p in phases))
    print(f"{'outside the roles':24} {'':7} {seconds - sum(r['total'] for r in rows.values()):8.2f}"
          "  (start, recorded state, models, plan)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stack", default=str(REPO / "stacks/lab"),
                        help="stack folder to copy under a name and subnet of its own")
    parser.add_argument("--running", default=None, help="folder of a lab already up: reapply only")
    parser.add_argument("--rounds", type=int, default=3, help="reapply runs; the median is shown")
    parser.add_argument("--cold-image", action="store_true", help="also build the image into an empty cache")
    parser.add_argument("--machines", default=None, help="nspawn (default) or libvirt")
    args = parser.parse_args()
    if args.running:
        stack = load_stack(args.running)
        base = ssh_baseline(args.running, stack.nodes[-1].name)
        print(f"machines: {len(stack.nodes)}; baseline `podium lab ssh NODE true` = {base:.2f} s")
        print_reapply(*reapply(args.running, args.rounds))
        return
    quiet = Console(stderr=True, quiet=True)
    figures: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        copy = unique_stack(Path(args.stack), Path(tmp))
        folder = str(copy.folder)
        stack = load_stack(folder)
        if args.cold_image:
            with tempfile.TemporaryDirectory(dir="/var/tmp") as cache:
                timed("image build, cold", lambda: build_rootfs(Path(cache), console=quiet), figures)
        timed("image build, cached", lambda: build_rootfs(console=quiet), figures)
        lab.reserve_network(stack)
        parts = lab.lab_parts(stack, args.machines)
        try:
            timed("machines up to SSH", lambda: lab.machines_up(parts, quiet), figures)
            lab.write_lab_inventory(stack)
            base = ssh_baseline(folder, stack.nodes[-1].name)
            cold = timed("podium up, cold", lambda: run("up", folder), figures)
            warm = timed("podium up, nothing to do", lambda: run("up", folder), figures)
            again = reapply(folder, args.rounds)
            figures["podium up --reapply"] = again[0]
            timed("podium verify", lambda: run("verify", folder, "--json"), figures)
        finally:
            lab.lab_down(stack, quiet, args.machines)
            remove_stack_state(copy.name)
    print(f"machines: {len(parts.specs)} ({parts.driver.name}); baseline `podium lab ssh NODE true` = {base:.2f} s")
    print(f"{'figure':32} {'seconds':>9} {'× baseline':>11}")
    for label, seconds in figures.items():
        print(f"{label:32} {seconds:9.2f} {seconds / base:11.1f}")
    print(f"changes: cold {changes(cold)}, nothing to do {changes(warm)}, reapply {changes(again[1])}")
    print_reapply(*again)


if __name__ == "__main__":
    main()
