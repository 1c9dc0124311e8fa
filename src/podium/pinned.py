"""What a node installs must match stacks/versions.yaml: the table as the plan pinned it for the
host, and downloads (a binary by its sha256, an apt signing key by its fingerprint) checked on
the node before anything trusts them."""

from __future__ import annotations

import shlex
from collections.abc import Mapping
from typing import Any

from pyinfra.api.exceptions import DeployError
from pyinfra.api.operation import OperationMeta
from pyinfra.context import host
from pyinfra.facts.files import Sha256File
from pyinfra.facts.server import Command
from pyinfra.operations import server

from podium.errors import InvalidInput
from podium.stack.versions import VersionTable, load_versions

# The fingerprint of the first primary key a key file holds; a second one (a key appended by
# whoever tampered with the file) prints a second line and so cannot match.
_FINGERPRINTS = "awk -F: '$1==\"pub\"{p=1;next} $1==\"fpr\"&&p{print $10;p=0}'"


def node_versions(data: Mapping[str, Any] | None = None) -> VersionTable:
    """The version table as the plan pinned it for this host: each component the host runs at the
    version its inventory names (`podium_<role>_version`, the stack's override or the table's),
    with the pins that follow that version moved too. Every role reads its pins from here.

    data: host data to read instead of the current pyinfra host's (a plan's inventory entry);
        outside a pyinfra run, with no host, the table's own pins.
    """
    table = load_versions()
    chosen: dict[str, str] = {}
    for name in table.components:
        key = f"podium_{name.replace('-', '_')}_version"
        # Outside a pyinfra run `host` is pyinfra's Host class, which has no data.
        version = data.get(key) if data is not None else getattr(getattr(host, "data", None), key, None)
        if version:
            chosen[name] = str(version)
    try:
        return table.with_versions(chosen)
    except InvalidInput as exc:
        # A hand-written inventory can name what `podium validate` refuses in a stack.
        raise DeployError(str(exc)) from None


def recorded_sha256(table: VersionTable, component: str, name: str, url: str) -> str:
    """The sha256 the table records for an artifact; refuses one nobody has recorded yet."""
    artifact = table.components[component].artifacts[name]
    if artifact.sha256 is None:
        raise DeployError(
            f"{component}: {name} is operator-supplied and stacks/versions.yaml records no sha256 "
            f"for it, so it is not installed; put the file at {url}, then record its digest "
            f"(sha256sum {artifact.file.rsplit('/', 1)[-1]}) as "
            f"components.{component}.artifacts.{name}.sha256"
        )
    return artifact.sha256


def fetch_artifact_script(name: str, url: str, dest: str, sha256: str, mode: str = "755") -> str:
    """Shell that downloads `url` beside nothing, and installs it at `dest` only if its sha256
    is the recorded one; otherwise one sentence naming the artifact and both digests, exit 1."""
    q = shlex.quote
    refusal = (
        f"{name} from {url} has sha256 $actual but stacks/versions.yaml records {sha256}: "
        "refusing to install it; check the file in the artifact mirror, or record its digest "
        "if it is the one you meant"
    )
    return "\n".join([
        "set -u",
        "tmp=$(mktemp -d) || exit 1",
        "trap 'rm -rf \"$tmp\"' EXIT",
        f'curl -fsSL --retry 3 -o "$tmp/download" {q(url)} || '
        f'{{ echo {q(f"could not fetch {name} from {url}")} >&2; exit 1; }}',
        'actual=$(sha256sum "$tmp/download" | cut -d" " -f1)',
        f'if [ "$actual" != {q(sha256)} ]; then echo "{_dq(refusal)}" >&2; exit 1; fi',
        f'install -m {q(mode)} "$tmp/download" {q(dest)}',
    ])


def key_fingerprint_command(path: str) -> str:
    """Shell printing the primary key fingerprint(s) of the OpenPGP key file at `path`."""
    return _fingerprints_of(shlex.quote(path))


def _fingerprints_of(word: str) -> str:
    # gpg wants a home even to only show a key; a throwaway one leaves root's keyrings alone.
    return (
        'home=$(mktemp -d) && GNUPGHOME="$home" gpg --batch --show-keys --with-colons '
        f'{word} 2>/dev/null | {_FINGERPRINTS}; rm -rf "$home"'
    )


def fetch_key_script(name: str, url: str, dest: str, fingerprint: str) -> str:
    """Shell that downloads an apt signing key and installs it at `dest` only if it is exactly
    the key with `fingerprint`; otherwise one sentence naming the key and both fingerprints."""
    q = shlex.quote
    refusal = (
        f"apt signing key {name} from {url} has fingerprint $found but stacks/versions.yaml "
        f"records {fingerprint}: refusing to install it; check the key's source, or record "
        "the new fingerprint once its publisher has announced it"
    )
    return "\n".join([
        "set -u",
        "tmp=$(mktemp -d) || exit 1",
        "trap 'rm -rf \"$tmp\"' EXIT",
        f'curl -fsSL --retry 3 -o "$tmp/key" {q(url)} || '
        f'{{ echo {q(f"could not fetch apt signing key {name} from {url}")} >&2; exit 1; }}',
        f'found=$({_fingerprints_of(chr(34) + "$tmp/key" + chr(34))})',
        'found=$(echo $found)',  # several keys print as one line of words, none as nothing
        'found=${found:-"(none: not an OpenPGP key)"}',
        f'if [ "$found" != {q(fingerprint)} ]; then echo "{_dq(refusal)}" >&2; exit 1; fi',
        f'install -m 644 "$tmp/key" {q(dest)}',
    ])


def _dq(text: str) -> str:
    """`text` for inside double quotes, keeping only $actual / $found live."""
    escaped = text.replace("\\", "\\\\").replace('"', '\\"').replace("`", "\\`").replace("$", "\\$")
    return escaped.replace("\\$actual", "$actual").replace("\\$found", "$found")


def pinned_artifact(name: str, url: str, dest: str, sha256: str, mode: str = "755") -> OperationMeta | None:
    """Install a downloaded binary whose sha256 is the recorded one; None when it is in place."""
    if host.get_fact(Sha256File, path=dest) == sha256:
        host.noop(f"{name} at {dest} already has the recorded sha256")
        return None
    op: OperationMeta = server.shell(
        name=f"Fetch {name}, sha256 {sha256[:12]}…",
        commands=[fetch_artifact_script(name, url, dest, sha256, mode)],
    )
    return op


def pinned_key(name: str, url: str, dest: str, fingerprint: str) -> OperationMeta | None:
    """Install an apt signing key whose fingerprint is the recorded one; None when it is in place."""
    probe = f"if test -f {shlex.quote(dest)}; then {key_fingerprint_command(dest)}; fi"
    if (host.get_fact(Command, command=probe) or "").split() == [fingerprint]:
        host.noop(f"apt signing key {dest} already has fingerprint {fingerprint}")
        return None
    op: OperationMeta = server.shell(
        name=f"Fetch apt signing key {name}, fingerprint …{fingerprint[-16:]}",
        commands=[fetch_key_script(name, url, dest, fingerprint)],
    )
    return op
