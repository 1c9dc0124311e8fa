"""Fetch one blob into a temp file beside its destination, verified while it streams, resumable."""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import requests

from podium.errors import InvalidInput, PodiumError
from podium.registry.artifact import CHUNK, Progress

log = logging.getLogger(__name__)

# GET the blob with these extra headers (a Range when resuming); the caller owns auth and URL.
BlobGetter = Callable[[dict[str, str]], requests.Response]

# A transfer cut off midway (a dropped connection, a registry restart) is resumed this many
# times within one pull before the pull gives up and removes what it wrote.
CUT_OFFS = 3


@dataclass(frozen=True)
class Fetched:
    """A blob fully written to `path` and proven to hash to its digest."""

    path: Path
    resumed_from: int  # bytes kept from an earlier, interrupted pull (0: fetched whole)


def partial_path(dest: Path, sha256: str) -> Path:
    """The temp file a blob downloads into; named by digest so a later pull finds and resumes it."""
    return dest / f".podium-{sha256}.partial"


def _hash_prefix(path: Path, size: int) -> tuple[hashlib._Hash, int]:
    """Hash what an earlier pull left behind; a file longer than the blob is thrown away."""
    h = hashlib.sha256()
    try:
        have = path.stat().st_size
    except FileNotFoundError:
        return h, 0
    if have > size:
        path.unlink()
        return h, 0
    with path.open("rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
    return h, have


def _stream(
    get: BlobGetter,
    partial: Path,
    start: int,
    h: hashlib._Hash,
    size: int,
    what: str,
    progress: Progress | None,
) -> tuple[int, int, hashlib._Hash]:
    """Append the blob from byte `start`, or rewrite it whole if the registry sends it whole.

    Returns the start actually used, the bytes now in the file, and the hash over all of them.
    """
    headers = {"Range": f"bytes={start}-"} if start else {}
    with get(headers) as r:
        if (
            start
            and r.status_code == 206
            and r.headers.get("Content-Range", "").startswith(f"bytes {start}-")
        ):
            mode = "ab"
            log.info("resumed %s from byte %d", what, start)
            if progress:
                progress(start)
        elif r.status_code == 200:
            if start:
                log.info("the registry sent %s whole instead of from byte %d", what, start)
            # The registry ignored the Range: start over rather than append a second copy.
            start, mode, h = 0, "wb", hashlib.sha256()
        elif r.status_code == 404:
            raise PodiumError(f"the registry has no blob for file {what!r}; push the model again")
        else:
            raise PodiumError(f"the registry answered HTTP {r.status_code} for file {what!r}")
        total = start
        with partial.open(mode) as f:
            for chunk in r.iter_content(CHUNK):
                # Stop once it is too long: it cannot match, and the disk is not ours to fill.
                if total + len(chunk) > size:
                    total += len(chunk)
                    break
                h.update(chunk)
                f.write(chunk)
                total += len(chunk)
                if progress:
                    progress(len(chunk))
            f.flush()
            os.fsync(f.fileno())
    return start, total, h


def fetch_blob(
    get: BlobGetter,
    sha256: str,
    size: int,
    partial: Path,
    what: str,
    progress: Progress | None = None,
) -> Fetched:
    """Download a blob into `partial`, checking its sha256 as bytes arrive.

    get: issues the GET for this blob, with the extra headers given (a Range when resuming).
    sha256: the hex digest the manifest promises; size: its size in bytes.
    partial: the temp file (see partial_path); a leftover one is resumed with an HTTP Range.
    what: the file's name, for messages.
    progress: called with each number of bytes written.

    A transfer cut off midway is resumed from where it stopped, up to CUT_OFFS times. A
    resumed download that ends with the wrong digest is thrown away and fetched once more
    from the start, since the leftover bytes may be what was wrong. A whole download with the
    wrong digest is refused and leaves nothing behind.
    """
    cut_offs = 0
    restarted = False
    while True:
        h, start = _hash_prefix(partial, size)
        # An empty blob has nothing to resume: its digest matches before any file exists.
        if start == size and partial.exists() and h.hexdigest() == sha256:
            if progress:
                progress(size)
            return Fetched(partial, start)
        if start == size and partial.exists():
            partial.unlink()
            h, start = hashlib.sha256(), 0
        try:
            start, total, h = _stream(get, partial, start, h, size, what, progress)
        except requests.RequestException as exc:
            cut_offs += 1
            if cut_offs < CUT_OFFS:
                log.warning("%s: the download was cut off (%s); resuming it", what, exc)
                continue
            raise PodiumError(
                f"download of {what!r} was cut off {cut_offs} times "
                f"({exc.__class__.__name__}); check the network to the registry and pull again"
            ) from exc
        if total == size and h.hexdigest() == sha256:
            return Fetched(partial, start)
        with contextlib.suppress(FileNotFoundError):
            partial.unlink()
        if start and not restarted:
            restarted = True
            log.warning(
                "%s: bytes kept from an interrupted pull were wrong; starting it over", what
            )
            continue
        raise InvalidInput(
            f"file {what!r} from the registry does not match its digest sha256:{sha256} "
            f"(got {total} bytes hashing to sha256:{h.hexdigest()}); refusing the model — "
            "the registry's copy is damaged, push the model again"
        )


def leftover_bytes(partial: Path, size: int) -> int:
    """Bytes of a blob an interrupted pull already wrote, which a resume need not fetch again."""
    try:
        return min(partial.stat().st_size, size)
    except FileNotFoundError:
        return 0


def check_free_space(dest: Path, needed: int, what: str) -> None:
    """Refuse a download the filesystem under `dest` cannot hold, before a byte is written.

    Running out midway would leave a half-written model and, on a node, a full disk under
    the engines and logs that share it.
    """
    probe = dest
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    free = shutil.disk_usage(probe).free
    if needed > free:
        raise PodiumError(
            f"{dest} has {free} bytes free but {what} needs {needed} bytes; free space there "
            "or pull into a folder on a larger disk"
        )


def place(fetched: Path, final: Path) -> None:
    """Move a verified temp file to its final name; after a crash, either old or new is there."""
    final.parent.mkdir(parents=True, exist_ok=True)
    os.replace(fetched, final)
    fd = os.open(final.parent, os.O_RDONLY)
    try:
        os.fsync(fd)  # make the rename itself durable
    finally:
        os.close(fd)
