"""The Vagrant lab timed: `podium lab box`, then `vagrant up` of every machine of a copy of
stacks/lab (under a name and subnet of its own), split into the machines booting and the
trigger's `podium up` per component, then `podium verify` and `vagrant destroy`. Seconds, and
each as a ratio to one SSH round trip to the first machine measured in the same run.

    .venv/bin/python bench/vagrant_up.py [--stack stacks/lab] [--keep]
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

from tests.fixtures_lab import remove_stack_state, unique_stack  # noqa: E402

from podium.drivers.libvirtd import ensure_libvirtd  # noqa: E402
from podium.stack import load_stack  # noqa: E402

PODIUM = [sys.executable, "-m", "podium"]
COMPONENT = re.compile(r"^\S+ (?P<what>[\w -]+): changed \d+ in (?P<total>[\d.]+) s")


def podium(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*PODIUM, *args], capture_output=True, text=True, cwd=REPO,
                          env={**os.environ, "COLUMNS": "200"})


def vagrant_up(env: dict[str, str], log: Path) -> tuple[float, float, dict[str, float]]:
    """Seconds until the trigger starts provisioning, seconds in all, and each component's."""
    start = time.perf_counter()
    booted = 0.0
    components: dict[str, float] = {}
    with subprocess.Popen(["vagrant", "up"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True, env=env, cwd=log.parent) as child, log.open("w") as kept:
        assert child.stdout is not None
        for line in child.stdout:
            kept.write(line)
            if not booted and "podium lab trust + podium up" in line and "Running trigger" not in line:
                booted = time.perf_counter() - start
            if found := COMPONENT.match(line.strip()):
                components[found["what"]] = float(found["total"])
    if child.returncode != 0:
        raise SystemExit(f"vagrant up failed; see {log}")
    return booted, time.perf_counter() - start, components


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--stack", default="stacks/lab")
    parser.add_argument("--keep", action="store_true", help="leave the machines up")
    args = parser.parse_args()
    ensure_libvirtd()
    work = Path(tempfile.mkdtemp(prefix="podium-vagrant-bench-"))
    copy = unique_stack(REPO / args.stack, work)
    pool = f"podium-vagrant-{copy.name}"
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
           "VAGRANT_CWD": str(REPO), "VAGRANT_DOTFILE_PATH": str(work / "dot"),
           "VAGRANT_HOME": str(work / "home"), "VAGRANT_CHECKPOINT_DISABLE": "1",
           "PODIUM_STACK": str(copy.folder / "stack.yaml"), "PODIUM_BOX": str(work / "podium.box"),
           "PODIUM_VAGRANT_POOL": pool}
    figures: dict[str, float] = {}
    baseline, verified = 0.0, "not reached"
    try:
        start = time.perf_counter()
        box = podium("lab", "box", "--stack", str(copy.folder), "--out", env["PODIUM_BOX"])
        if box.returncode != 0:
            raise SystemExit(box.stderr)
        figures["lab box"] = time.perf_counter() - start
        booted, total, components = vagrant_up(env, work / "up.log")
        figures["vagrant up: machines booted"] = booted
        figures.update({f"  podium up: {name}": seconds for name, seconds in components.items()})
        figures["vagrant up, in all"] = total
        start = time.perf_counter()
        verify = podium("verify", str(copy.folder))
        verified = "passed" if verify.returncode == 0 else "FAILED"
        if verify.returncode:
            # Which checks failed, kept with the figures: the machines are gone afterwards.
            (work / "verify.log").write_text(verify.stdout + verify.stderr)
            verified += ": " + " | ".join(x for x in verify.stdout.splitlines() if "FAIL" in x)[:2000]
        figures["podium verify"] = time.perf_counter() - start
        first = load_stack(copy.folder).nodes[0].name
        start = time.perf_counter()
        podium("lab", "ssh", str(copy.folder), first, "true")
        baseline = time.perf_counter() - start
    finally:
        if not args.keep:
            start = time.perf_counter()
            subprocess.run(["vagrant", "destroy", "-f"], env=env, cwd=work, capture_output=True)
            figures["vagrant destroy"] = time.perf_counter() - start
            for line in subprocess.run(["virsh", "-q", "-c", "qemu:///system", "vol-list", pool],
                                       capture_output=True, text=True).stdout.splitlines():
                subprocess.run(["virsh", "-c", "qemu:///system", "vol-delete", line.split()[0],
                                "--pool", pool], capture_output=True)
            for step in ("pool-destroy", "pool-undefine"):
                subprocess.run(["virsh", "-c", "qemu:///system", step, pool], capture_output=True)
            remove_stack_state(copy.name)
    print(f"stack {args.stack} as {copy.name}; load average {os.getloadavg()[0]:.1f}; "
          f"verify {verified}")
    if not baseline:
        raise SystemExit(f"stopped before the baseline; figures so far: {figures}")
    print(f"baseline: one SSH round trip {baseline:.2f} s")
    for label, seconds in figures.items():
        print(f"{label:40} {seconds:8.1f} s  {seconds / baseline:8.0f}×")


if __name__ == "__main__":
    main()
