"""Carry a trained adapter folder through a pod's log: the Job's last container prints it as JSON
lines of base64 (a gzipped tar), and the CLI reads it back, checked against its sha256.

A log carries what the kubelet keeps of it (containerLogMaxSize, 10 MiB by default): enough for
the adapters of small models; a cut log is refused by its byte count and digest, never half-used.

    python -m podium.finetune.adapter_log ADAPTER_DIR
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import io
import json
import sys
import tarfile
from collections.abc import Iterable, Iterator
from pathlib import Path

from podium.errors import PodiumError
from podium.finetune.job import events

PART_BYTES = 48 * 1024


def adapter_lines(folder: Path) -> Iterator[str]:
    """The folder's files as `adapter-part` lines, then an `adapter-end` line with their digest."""
    buffer = io.BytesIO()
    # No time in the gzip header: the same adapter always prints the same lines.
    with gzip.GzipFile(fileobj=buffer, mode="wb", mtime=0) as packed, \
            tarfile.open(fileobj=packed, mode="w") as tar:
        for path in sorted(folder.iterdir()):
            if path.is_file():
                tar.add(path, arcname=path.name)
    data = buffer.getvalue()
    for start in range(0, len(data), PART_BYTES):
        part = base64.b64encode(data[start:start + PART_BYTES]).decode()
        yield json.dumps({"event": "adapter-part", "data": part})
    yield json.dumps({"event": "adapter-end", "bytes": len(data),
                      "sha256": hashlib.sha256(data).hexdigest()})


def read_adapter(lines: Iterable[str], dest: Path) -> Path:
    """Write the adapter the lines carry into `dest`; PodiumError when they are cut or altered."""
    parts: list[bytes] = []
    end: dict[str, object] | None = None
    for event in events(lines):
        if event.get("event") == "adapter-part":
            parts.append(base64.b64decode(str(event.get("data", ""))))
        elif event.get("event") == "adapter-end":
            end = event
    data = b"".join(parts)
    if end is None or end.get("bytes") != len(data) or end.get("sha256") != hashlib.sha256(data).hexdigest():
        raise PodiumError(
            f"the adapter's log holds {len(data)} bytes that do not match its end line "
            f"({end or 'missing'}); the kubelet cut the log (raise its containerLogMaxSize) "
            "or the pod was removed before it was read")
    dest.mkdir(parents=True, exist_ok=True)
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        # The data filter refuses links and paths that leave `dest`.
        tar.extractall(dest, filter="data")
    return dest


def main(argv: list[str]) -> int:
    folder = Path(argv[0])
    if not (folder / "adapter_config.json").is_file():
        print(f"{folder} holds no trained adapter (no adapter_config.json)", file=sys.stderr)
        return 1
    for line in adapter_lines(folder):
        print(line, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
