"""Give each lab machine its own cgroup in every hierarchy the host has, with its limits."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)

CGROUP_MOUNT = Path("/sys/fs/cgroup")
CPU_PERIOD_US = 100_000


@dataclass(frozen=True)
class CgroupLayout:
    """Where a machine's cgroups go: `tracking` hold its processes, `memory`/`cpu` its limits.

    mode is "unified" (cgroup v2 only), "hybrid" (v1 controllers, v2 for tracking)
    or "legacy" (v1 only).
    """

    mode: str
    tracking: tuple[Path, ...]
    memory: Path | None = None
    cpu: Path | None = None
    skipped: tuple[str, ...] = field(default=())


def cgroup_layout(mounts: str) -> CgroupLayout:
    """Read the cgroup hierarchies from /proc/self/mounts text.

    systemd inside the machine needs a cgroup of its own in the name=systemd
    (v1) and unified (v2) trees, or machines fight over one cgroup.
    """
    v1: dict[str, Path] = {}
    v2: list[Path] = []
    for line in mounts.splitlines():
        parts = line.split()
        if len(parts) < 4:
            continue
        mountpoint, fstype, options = Path(parts[1]), parts[2], parts[3].split(",")
        if fstype == "cgroup2":
            v2.append(mountpoint)
        elif fstype == "cgroup":
            for option in options:
                if option in ("memory", "cpu") or option == "name=systemd":
                    v1[option] = mountpoint
    if "name=systemd" not in v1 and v2:
        # Pure v2: one tree holds processes and limits, if the controllers are enabled.
        root = v2[0]
        controllers = _read(root / "cgroup.controllers").split()
        skipped = tuple(
            f"{c} controller not enabled in {root}"
            for c in ("memory", "cpu")
            if c not in controllers
        )
        return CgroupLayout(
            mode="unified",
            tracking=(root,),
            memory=root if "memory" in controllers else None,
            cpu=root if "cpu" in controllers else None,
            skipped=skipped,
        )
    tracking = tuple(p for p in (v1.get("name=systemd"), *v2[:1]) if p is not None)
    skipped = tuple(f"no cgroup v1 {c} hierarchy mounted" for c in ("memory", "cpu") if c not in v1)
    return CgroupLayout(
        mode="hybrid" if v2 else "legacy",
        tracking=tracking,
        memory=v1.get("memory"),
        cpu=v1.get("cpu"),
        skipped=skipped,
    )


def host_layout() -> CgroupLayout:
    return cgroup_layout(_read(Path("/proc/self/mounts")))


def machine_cgroup(lab: str, node: str) -> Path:
    """The machine's path inside every hierarchy, relative to the hierarchy's root."""
    return Path("podium") / lab / node


def group_dirs(layout: CgroupLayout, lab: str, node: str) -> list[Path]:
    """Every cgroup folder of one machine, without repeats (v2 uses one tree for all)."""
    relative = machine_cgroup(lab, node)
    roots = [*layout.tracking, layout.memory, layout.cpu]
    seen: list[Path] = []
    for root in roots:
        if root is not None and root / relative not in seen:
            seen.append(root / relative)
    return seen


def prepare(layout: CgroupLayout, lab: str, node: str, cpus: int, memory_mb: int) -> list[Path]:
    """Create the machine's cgroups and set its limits; returns the folders to join."""
    for reason in layout.skipped:
        log.info("lab machine %s: limit skipped: %s", node, reason)
    if layout.mode == "unified":
        _enable_v2_controllers(layout, lab)
    dirs = group_dirs(layout, lab, node)
    for path in dirs:
        path.mkdir(parents=True, exist_ok=True)
    relative = machine_cgroup(lab, node)
    memory_bytes = str(memory_mb * 1024 * 1024)
    if layout.memory is not None:
        name = "memory.max" if layout.mode == "unified" else "memory.limit_in_bytes"
        _write_limit(layout.memory / relative / name, memory_bytes, node)
    if layout.cpu is not None:
        quota = str(cpus * CPU_PERIOD_US)
        if layout.mode == "unified":
            _write_limit(layout.cpu / relative / "cpu.max", f"{quota} {CPU_PERIOD_US}", node)
        else:
            _write_limit(layout.cpu / relative / "cpu.cfs_period_us", str(CPU_PERIOD_US), node)
            _write_limit(layout.cpu / relative / "cpu.cfs_quota_us", quota, node)
    return dirs


def join(dirs: list[Path]) -> None:
    """Move the calling process into `dirs` (runs in the child between fork and exec)."""
    pid = str(os.getpid())
    for path in dirs:
        with open(path / "cgroup.procs", "w") as procs:
            procs.write(pid)


def pids(layout: CgroupLayout, lab: str, node: str) -> set[int]:
    """Every process left in the machine's cgroup trees."""
    found: set[int] = set()
    for top in group_dirs(layout, lab, node):
        for folder, _, _ in os.walk(top):
            found.update(int(p) for p in _read(Path(folder) / "cgroup.procs").split())
    return found


def kill_and_remove(layout: CgroupLayout, lab: str, node: str, timeout: float = 10.0) -> None:
    """SIGKILL whatever is left of the machine, then remove its cgroups (deepest first)."""
    deadline = time.monotonic() + timeout
    while remaining := pids(layout, lab, node):
        for pid in remaining:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        if time.monotonic() > deadline:
            raise OSError(f"processes {sorted(remaining)} of lab machine {node} did not exit")
        time.sleep(0.1)
    for top in group_dirs(layout, lab, node):
        _remove_tree(top)
    # The lab and podium levels go once they are empty; another machine may still use them.
    for root in {p.parent.parent.parent for p in group_dirs(layout, lab, node)}:
        for level in (root / "podium" / lab, root / "podium"):
            try:
                level.rmdir()
            except OSError:
                break


def _remove_tree(top: Path) -> None:
    if not top.is_dir():
        return
    for folder, _, _ in sorted(os.walk(top), key=lambda entry: -len(entry[0])):
        Path(folder).rmdir()


def _enable_v2_controllers(layout: CgroupLayout, lab: str) -> None:
    wanted = [c for c, root in (("memory", layout.memory), ("cpu", layout.cpu)) if root is not None]
    root = layout.tracking[0]
    for level in (root, root / "podium", root / "podium" / lab):
        level.mkdir(exist_ok=True)
        for controller in wanted:
            try:
                (level / "cgroup.subtree_control").write_text(f"+{controller}")
            except OSError as exc:
                log.info("cannot enable the %s controller in %s: %s", controller, level, exc)


def _write_limit(path: Path, value: str, node: str) -> None:
    try:
        path.write_text(value)
    except OSError as exc:
        log.info("lab machine %s: limit %s=%s skipped: %s", node, path.name, value, exc)


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""
