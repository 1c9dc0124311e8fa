"""Push and pull a 1 GiB model through a local docker-registry, as ratios against `cp` of the file.

Run: .venv/bin/python bench/registry.py [--size-mib 1024] [--dir /var/tmp]

Baseline and subject are measured in the same run on the same disk. `cp` leaves its bytes in
the page cache; a pull also fsyncs each file, so a "cp + sync" baseline is printed too.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # for tests.fixtures_registry

from tests.fixtures_registry import running_registry  # noqa: E402

from podium.registry import ModelRef, Registry  # noqa: E402


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def timed(label: str, fn: object) -> float:
    start = time.perf_counter()
    fn()  # type: ignore[operator]
    seconds = time.perf_counter() - start
    print(f"  {label:<28} {seconds:7.2f} s", flush=True)
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--dir", default="/var/tmp", help="Where the files and registry live.")
    args = parser.parse_args()
    size = args.size_mib << 20
    work = Path(tempfile.mkdtemp(prefix="podium-bench-", dir=args.dir))
    try:
        src = work / "model.gguf"
        with src.open("wb") as f:
            for _ in range(size // (64 << 20) or 1):
                f.write(os.urandom(min(size, 64 << 20)))
        expect = hashlib.sha256(src.read_bytes()).hexdigest()
        print(f"file: {src.stat().st_size / 2**30:.2f} GiB in {work}")

        def cp(dest: Path, sync: bool) -> None:
            subprocess.run(["cp", str(src), str(dest)], check=True)
            if sync:
                subprocess.run(["sync", str(dest)], check=True)
            dest.unlink()

        cp_plain = min(timed(f"cp (run {i})", lambda: cp(work / "copy", False)) for i in (1, 2))
        cp_sync = timed("cp + sync", lambda: cp(work / "copy", True))

        with running_registry(work / "registry") as reg:
            client = Registry(reg.address, insecure=True)
            digests: list[str] = []
            before = cpu_seconds(reg.pid)
            push = timed("podium push", lambda: digests.append(client.push(src, "bench", "v1")))
            push_cpu = cpu_seconds(reg.pid) - before
            before = cpu_seconds(reg.pid)
            pull = timed(
                "podium pull",
                lambda: client.pull(ModelRef("bench", digest=digests[0]), work / "pulled"),
            )
            pull_cpu = cpu_seconds(reg.pid) - before
            got = hashlib.sha256((work / "pulled" / "model.gguf").read_bytes()).hexdigest()
            assert got == expect, "pulled file differs from the pushed one"

        gib = size / 2**30
        print()
        print(f"cp            {gib / cp_plain:6.2f} GiB/s  (baseline)")
        print(f"cp + sync     {gib / cp_sync:6.2f} GiB/s  ratio {cp_sync / cp_plain:5.2f}x cp")
        print(f"podium push   {gib / push:6.2f} GiB/s  ratio {push / cp_plain:5.2f}x cp")
        print(
            f"podium pull   {gib / pull:6.2f} GiB/s  ratio {pull / cp_plain:5.2f}x cp, "
            f"{pull / cp_sync:5.2f}x cp+sync"
        )
        print(f"registry CPU: {push_cpu:.2f} s during push, {pull_cpu:.2f} s during pull")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
