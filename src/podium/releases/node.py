"""A release on the nodes: each keeps a small record of it in /var/lib/podium/releases/, and
prunes the engine versions and models that no release the stack keeps uses there."""

from __future__ import annotations

import contextlib
import json
import shlex
from collections.abc import Sequence
from io import StringIO

from pyinfra.api.deploy import add_deploy
from pyinfra.api.exceptions import PyinfraError
from pyinfra.api.operations import run_ops
from pyinfra.api.state import StateStage
from pyinfra.context import host
from pyinfra.facts.server import Command
from pyinfra.operations import files, server

from podium.drivers.pyinfra_runner import connected, unreachable
from podium.errors import PodiumError
from podium.inventory import HostEntry
from podium.plan.state import NODE_RELEASES, RELEASE_RECORD
from podium.releases.prune import ARTIFACT_DIRS, prunable
from podium.releases.record import Release


def node_record_path(number: int) -> str:
    return f"{NODE_RELEASES}/{number:04d}.json"


def listing_command() -> str:
    """One path per line: what sits one level under each folder the roles version things in."""
    folders = " ".join(shlex.quote(d) for d in ARTIFACT_DIRS)
    return f"find {folders} -mindepth 1 -maxdepth 1 2>/dev/null || true"


def record_on_nodes(entries: Sequence[HostEntry], release: Release, kept: Sequence[Release]) -> list[str]:
    """Write the release on every node and prune there; returns the paths pruned (host:path)."""
    pruned: list[str] = []
    with connected(entries) as state:
        state.set_stage(StateStage.Prepare)
        add_deploy(state, _on_node, release, list(kept), pruned)
        state.set_stage(StateStage.Execute)
        with contextlib.suppress(PyinfraError):
            run_ops(state)
        failed = unreachable(state, entries) + [h.name for h in state.failed_hosts]
    if failed:
        raise PodiumError(
            f"release {release.number} could not be written on {', '.join(sorted(failed))}; "
            "run podium up again once the node is reachable"
        )
    return pruned


def _on_node(release: Release, kept: list[Release], pruned: list[str]) -> None:
    record = json.dumps(release.for_host(host.name), indent=2, sort_keys=True) + "\n"
    files.directory(name="Podium releases folder", path=NODE_RELEASES, mode="755")
    files.put(name=f"Record release {release.number}", src=StringIO(record),
              dest=node_record_path(release.number), mode="644")
    files.put(name="Record the current release", src=StringIO(record), dest=RELEASE_RECORD, mode="644")
    listing = host.get_fact(Command, command=listing_command()) or ""
    stale = prunable(host.name, listing.splitlines(), kept)
    if stale:
        pruned.extend(f"{host.name}:{p}" for p in stale)
        # Older releases' venvs, wheels and models go only once a newer release is recorded.
        server.shell(name=f"Prune {len(stale)} artifacts no kept release uses",
                     commands=[f"rm -rf -- {' '.join(shlex.quote(p) for p in stale)}"])
