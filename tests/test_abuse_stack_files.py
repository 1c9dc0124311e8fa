"""Hostile stack files, tried as an attacker would: `podium validate` ends every one with exit 2
and one short sentence, within seconds and with bounded memory (the real CLI as a child)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

# Every run imports the CLI (~70 MB resident); a file that is read or expanded whole goes far past.
MAX_RSS_KIB = 200 * 1024
MAX_SECONDS = 15.0

LAUGHS = "a: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n" + "".join(
    f"{b}: &{b} [{', '.join([f'*{a}'] * 9)}]\n" for a, b in zip("abcdefgh", "bcdefghi", strict=True)
)


def _write(text: str | bytes) -> Callable[[Path], Path]:
    def make(folder: Path) -> Path:
        path = folder / "stack.yaml"
        path.write_bytes(text.encode() if isinstance(text, str) else text)
        return path

    return make


def _sparse(size: int) -> Callable[[Path], Path]:
    def make(folder: Path) -> Path:
        path = folder / "stack.yaml"
        with path.open("wb") as handle:
            handle.truncate(size)
        return path

    return make


def _one_scalar(size: int) -> Callable[[Path], Path]:
    def make(folder: Path) -> Path:
        path = folder / "stack.yaml"
        with path.open("w") as handle:
            handle.write("name: x\ndescription: ")
            chunk = "a" * (1 << 20)
            for _ in range(size >> 20):
                handle.write(chunk)
        return path

    return make


def _fifo(folder: Path) -> Path:
    os.mkfifo(folder / "stack.yaml")
    return folder  # the folder form: resolve_path finds a stack.yaml that is a FIFO


def _folder_named_stack_yaml(folder: Path) -> Path:
    (folder / "stack.yaml").mkdir()
    return folder / "stack.yaml"


def _symlink_loop(folder: Path) -> Path:
    (folder / "a.yaml").symlink_to(folder / "b.yaml")
    (folder / "b.yaml").symlink_to(folder / "a.yaml")
    return folder / "a.yaml"


def _device(folder: Path) -> Path:
    (folder / "stack.yaml").symlink_to("/dev/zero")
    return folder


HOSTILE: dict[str, tuple[Callable[[Path], Path], str]] = {
    "not-utf8": (_write(b"name: caf\xe9\nnodes: []\n"), "is not UTF-8 text"),
    "utf16": (_write("name: x\n".encode("utf-16")), "is not UTF-8 text"),
    "nul-byte": (_write("name: a\x00b\n"), "is not allowed in a YAML file"),
    "nested-lists": (_write("name: " + "[" * 200_000 + "]" * 200_000 + "\n"), "nest"),
    "nested-maps": (_write("name: " + "{a: " * 50_000 + "1" + "}" * 50_000 + "\n"), "nest"),
    "nested-blocks": (
        _write("".join(" " * i + "a:\n" for i in range(1000)) + " " * 1000 + "b\n"),
        "levels deep",
    ),
    "billion-laughs": (_write(LAUGHS), "aliases"),
    "too-many-values": (_write("name: x\nnodes: [" + "a, " * 60_000 + "a]\n"), "holds more than"),
    "alias-in-itself": (_write("name: x\nnodes: &n [*n]\n"), "aliases"),
    "huge-200MB": (_sparse(200 << 20), "more than a stack file's limit"),
    "one-scalar-50MB": (_one_scalar(50 << 20), "more than a stack file's limit"),
    "fifo": (_fifo, "not a regular file"),
    "folder-as-file": (_folder_named_stack_yaml, "no such stack file"),
    "symlink-loop": (_symlink_loop, "not a regular file"),
    "device": (_device, "not a regular file"),
    "impossible-date": (_write("name: x\nnodes: []\nexpires: 2026-02-30\n"), "not a valid timestamp"),
    "5000-digit-int": (_write("name: x\nnodes: []\nn: " + "9" * 5000 + "\n"), "not a valid int"),
    "list-as-key": (_write("? [a, b]\n: 1\n"), "a key must be a plain word"),
    "python-tag": (_write('name: !!python/object/apply:os.system ["true"]\n'), "is not allowed"),
}


# A child's peak resident memory counts what it inherited at fork, so a child of this (large)
# test process would report the test's own size: a small Python in between forks the real one.
_MEASURED = """
import os, sys
pid = os.fork()
if pid == 0:
    os.execv(sys.executable, [sys.executable, "-m", "podium", "validate", sys.argv[1]])
_, status, usage = os.wait4(pid, 0)
sys.stdout.write(str(usage.ru_maxrss))
sys.exit(os.waitstatus_to_exitcode(status))
"""


def _run_validate(target: Path) -> tuple[int, str, float, int]:
    """Exit status, stderr, seconds and peak resident KiB of one `podium validate` child."""
    started = time.monotonic()
    child = subprocess.Popen(
        [sys.executable, "-c", _MEASURED, str(target)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        out, err = child.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        # A file that never ends must not hang the suite: its whole process group goes.
        os.killpg(child.pid, signal.SIGKILL)
        child.communicate()
        pytest.fail(f"podium validate {target} did not end within 60 s")
    elapsed = time.monotonic() - started
    return child.returncode, err.decode(errors="replace"), elapsed, int(out or 0)


@pytest.mark.parametrize("kind", list(HOSTILE))
def test_hostile_stack_file_ends_in_exit_2_with_one_sentence_fast_and_small(
    kind: str, tmp_path: Path
) -> None:
    make, expected = HOSTILE[kind]
    target = make(tmp_path)
    status, stderr, seconds, peak = _run_validate(target)
    assert status == 2, f"{kind}: exit {status}: {stderr[-1500:]}"
    assert "Traceback" not in stderr, f"{kind}: {stderr[-1500:]}"
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), f"{kind}: not one line: {stderr[:600]!r}"
    assert len(lines[0]) < 300, f"{kind}: not short: {lines[0]}"
    assert expected in lines[0], f"{kind}: {lines[0]}"
    assert seconds < MAX_SECONDS, f"{kind}: took {seconds:.1f} s"
    assert peak < MAX_RSS_KIB, f"{kind}: peak resident memory {peak} KiB"
