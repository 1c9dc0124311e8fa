"""A folder of the control machine kept on a node (wheelhouses, wheels) with one fact: the
node's file digests in one listing, then only what differs is sent; pyinfra's files.sync asks
twice per file, which for a wheelhouse of a hundred wheels was most of a reapply."""

from __future__ import annotations

import functools
import hashlib
import shlex
from collections.abc import Generator
from pathlib import Path

from pyinfra import host
from pyinfra.api import FileUploadCommand, QuoteString, StringCommand, operation
from pyinfra.facts.server import Command


@functools.lru_cache(maxsize=4096)
def _sha256(path: str, size: int, mtime_ns: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def local_digests(src: Path) -> dict[str, str]:
    """Path relative to `src` → sha256, for every file under it (remembered per size and time)."""
    out = {}
    for path in sorted(p for p in src.rglob("*") if p.is_file()):
        info = path.stat()
        out[path.relative_to(src).as_posix()] = _sha256(str(path), info.st_size, info.st_mtime_ns)
    return out


def parse_listing(text: str) -> dict[str, str]:
    """`sha256sum` lines of `find . -type f` run in the folder → relative path → sha256."""
    out = {}
    for line in text.splitlines():
        digest, _, name = line.partition("  ")
        if len(digest) == 64 and name.startswith("./"):
            out[name[2:]] = digest
    return out


@operation()
def shipped(src: str, dest: str, delete: bool = False, mode: str = "644") -> Generator:
    """Make `dest` on the node hold the files of `src` here, sending only those that differ.

    + src: the folder on the control machine
    + dest: the folder on the node
    + delete: also remove files under `dest` that `src` does not have
    + mode: mode of the files sent

    **Example:**

    .. code:: python

        shipped(name="Ship the gateway's wheels", src=str(house), dest="/opt/podium/gateway/wheels",
                delete=True)
    """
    wanted = local_digests(Path(src))
    folder = shlex.quote(dest)
    listing = host.get_fact(
        Command, command=f"cd {folder} 2>/dev/null && find . -type f -print0 | xargs -0r sha256sum || true"
    )
    have = parse_listing(listing or "")
    send = sorted(p for p, digest in wanted.items() if have.get(p) != digest)
    extra = sorted(set(have) - set(wanted)) if delete else []
    if not send and not extra:
        host.noop(f"{dest} holds the {len(wanted)} files of {src}")
        return
    folders = sorted({f"{dest}/{p}".rsplit("/", 1)[0] for p in send})
    if folders:
        yield StringCommand("mkdir", "-p", *(QuoteString(f) for f in folders))
    for relative in send:
        target = f"{dest}/{relative}"
        yield FileUploadCommand(str(Path(src) / relative), target,
                                remote_temp_filename=host.get_temp_filename(target))
    if send:
        yield StringCommand("chmod", mode, *(QuoteString(f"{dest}/{p}") for p in send))
    if extra:
        yield StringCommand("rm", "-f", *(QuoteString(f"{dest}/{p}") for p in extra))
