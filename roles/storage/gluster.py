"""What the storage role asks GlusterFS to do, as pure functions of its settings and of what
`gluster` printed, so the commands are tested without a cluster."""

from __future__ import annotations

import shlex
import xml.etree.ElementTree as ET
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


def bricks(settings: Mapping[str, Any]) -> list[str]:
    """ADDRESS:PATH of each brick, in the order of the storage nodes (replica sets in order)."""
    return [f"{address}:{settings['brick']}" for address in settings["server_addresses"]]


def pool_addresses(pool_list: str) -> set[str]:
    """Host names of the peers `gluster pool list` shows (its own node is `localhost`)."""
    out = set()
    for line in pool_list.splitlines()[1:]:
        fields = line.split()
        if len(fields) >= 3:
            out.add(fields[1])
    return out


def peer_probes(settings: Mapping[str, Any], pool_list: str) -> list[str]:
    """Probe, from the first server, every other server not yet in the pool."""
    known = pool_addresses(pool_list)
    return [
        f"gluster peer probe {shlex.quote(a)}" for a in settings["server_addresses"][1:] if a not in known
    ]


def wait_for_peers(settings: Mapping[str, Any], seconds: int = 60) -> str:
    """Wait until every other server is a connected member; a volume cannot be made before."""
    others = len(settings["server_addresses"]) - 1
    return (
        f"for i in $(seq {seconds}); do "
        f"[ $(gluster peer status | grep -c 'Peer in Cluster (Connected)') -ge {others} ] "
        "&& exit 0; sleep 1; done; gluster peer status; exit 1"
    )


def volume_create(settings: Mapping[str, Any], force: bool) -> str:
    """Create the volume: replicated over `replicas` bricks, distributed over replica sets.

    force: bricks sit on the root file system (no brick disk), which gluster refuses without it.
    """
    replicas = int(settings["replicas"])
    layout = f"replica {replicas} " if replicas > 1 else ""
    # Script mode answers the interactive questions (replica 2 split-brain warning) with yes.
    return (
        f"gluster --mode=script volume create {shlex.quote(settings['volume'])} {layout}"
        + " ".join(shlex.quote(b) for b in bricks(settings))
        + (" force" if force else "")
    )


def volume_start(settings: Mapping[str, Any]) -> str:
    return f"gluster --mode=script volume start {shlex.quote(settings['volume'])}"


@dataclass(frozen=True)
class VolumeStatus:
    """A volume as `gluster volume status VOLUME detail --xml` reports it."""

    name: str
    started: bool
    # brick (ADDRESS:PATH) → online
    bricks: dict[str, bool]

    @property
    def offline(self) -> list[str]:
        return [b for b, online in self.bricks.items() if not online]


def volume_info_started(info_xml: str) -> bool | None:
    """From `gluster volume info VOLUME --xml`: True started, False stopped, None absent."""
    if not info_xml.strip():
        return None
    root = ET.fromstring(info_xml)
    if root.findtext("opRet") not in (None, "0"):
        return None
    volume = root.find("./volInfo/volumes/volume")
    if volume is None:
        return None
    return volume.findtext("statusStr") == "Started"


def volume_status(status_xml: str) -> VolumeStatus:
    """Parse `gluster volume status VOLUME --xml` (only a started volume has one)."""
    root = ET.fromstring(status_xml)
    volume = root.find("./volStatus/volumes/volume")
    if root.findtext("opRet") != "0" or volume is None:
        error = root.findtext("opErrstr") or "no such volume or it is not started"
        return VolumeStatus("", False, {"(volume)": False} if error else {})
    found = {}
    for node in volume.findall("node"):
        path = node.findtext("path") or ""
        if not path.startswith("/"):
            continue  # self-heal daemons are listed as nodes too
        found[f"{node.findtext('hostname')}:{path}"] = node.findtext("status") == "1"
    return VolumeStatus(volume.findtext("volName") or "", True, found)
