"""Role base's package sources on a stack that serves its own bundle: the mirror and nothing else."""

from io import StringIO
from typing import Any

from pyinfra import host
from pyinfra.api.operation import OperationMeta
from pyinfra.facts.files import FindFiles
from pyinfra.operations import files

from podium.bundle.debs import KEY_FILE

SOURCES = "/etc/apt/sources.list"
SOURCE_PARTS = "/etc/apt/sources.list.d"
APT_CONF = "/etc/apt/apt.conf.d/60podium-mirror"


def only_the_mirror(mirror: dict[str, Any], rendered: dict[str, str], ca_file: str) -> list[OperationMeta]:
    """Point apt at the bundle's node alone; returns the operations whose change needs an update.

    mirror: the plan's `mirror` settings (url, host, keyring, ca).
    rendered: role base's files for this host.
    ca_file: the stack CA's certificate on the control machine.
    """
    changed = [
        # apt checks the mirror's certificate against the stack CA itself, before base puts the
        # CA into the trust store further down.
        files.put(name="Stack CA for the mirror", src=ca_file,
                  dest=mirror["ca"], mode="644", create_remote_dir=True),
        files.put(name="The bundle's signing key", src=f"{host.data.podium_bundle}/apt/{KEY_FILE}",
                  dest=mirror["keyring"], mode="644",
                  create_remote_dir=True),
        files.put(name="apt trusts the stack CA for the mirror", src=StringIO(rendered["podium-mirror.apt.conf"]),
                  dest=APT_CONF, mode="644"),
        files.put(name="apt's only source is the mirror", src=StringIO(rendered["podium-mirror.list"]),
                  dest=SOURCES, mode="644"),
    ]
    others = host.get_fact(FindFiles, path=SOURCE_PARTS, quote_path=True, maxdepth=1) or []
    for path in sorted(others):
        changed.append(files.file(name=f"No other source: {path}", path=path, present=False))
    return changed
