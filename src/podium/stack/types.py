"""Small value types shared by the stack sections: names, sizes, durations, model references."""

from __future__ import annotations

import re
from ipaddress import IPv4Address, IPv4Network
from typing import Annotated

from pydantic import AfterValidator, BeforeValidator, Field

_SIZE = re.compile(r"^(\d+)(B|KiB|MiB|GiB|TiB)$")
_UNITS = {"B": 1, "KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30, "TiB": 1 << 40}
_DURATION = re.compile(r"^(\d+)(s|m|h|d|w|y)$")


def _size(value: str) -> str:
    if not _SIZE.match(value):
        raise ValueError("a size is a whole number and a unit: B, KiB, MiB, GiB or TiB (e.g. 4GiB)")
    return value


def _duration(value: str) -> str:
    if not _DURATION.match(value):
        raise ValueError("a duration is a whole number and a unit: s, m, h, d, w or y (e.g. 15d)")
    return value


def _not_a_number(value: object) -> object:
    # ipaddress takes integers as addresses, so YAML's `5` or `true` would become 0.0.0.5 or
    # 0.0.0.1 without a word.
    if isinstance(value, int | float):
        raise ValueError("write an address in dotted form, like 10.77.0.10 (a subnet: 10.77.0.0/24)")
    return value


def size_bytes(value: str) -> int:
    match = _SIZE.match(value)
    assert match, value
    return int(match.group(1)) * _UNITS[match.group(2)]


# Names become hostnames, systemd unit names and Kubernetes object names: keep them DNS-safe.
Name = Annotated[str, Field(pattern=r"^[a-z][a-z0-9-]{0,40}$")]
Size = Annotated[str, AfterValidator(_size)]
Duration = Annotated[str, AfterValidator(_duration)]
Port = Annotated[int, Field(ge=1, le=65535)]
Address = Annotated[IPv4Address, BeforeValidator(_not_a_number)]
Subnet = Annotated[IPv4Network, BeforeValidator(_not_a_number)]


# Characters that end a line or hide text somewhere a file or a terminal reads the value:
# C0/C1 controls (newline, NUL, ESC...), Unicode line and paragraph separators, and the
# invisible bidirectional and zero-width marks.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u200b-\u200f\u202a-\u202e\u2066-\u2069\ufeff]")


def _no_control(value: str) -> str:
    if _CONTROL.search(value):
        raise ValueError(
            "holds a control character (newline, tab, NUL, escape or a Unicode line separator); "
            "write the value on one line of printable characters"
        )
    return value


def _shaped(pattern: str, what: str) -> AfterValidator:
    """A string that reaches shell commands or config files unquoted: only these characters."""
    compiled = re.compile(pattern)

    def check(value: str) -> str:
        _no_control(value)
        if not compiled.fullmatch(value):
            raise ValueError(what)
        return value

    return AfterValidator(check)


def _source(value: str) -> str:
    _no_control(value)
    if re.fullmatch(r"[a-z][a-z0-9-]{0,40}", value):
        return value  # a node name; rules check that it is one
    try:
        IPv4Network(value, strict=False)
    except ValueError:
        raise ValueError(
            "is neither a node name nor an IPv4 address or subnet; write e.g. 10.0.0.5 or 10.0.0.0/24"
        ) from None
    return value


def _arg_key(value: object) -> object:
    # Engine flags may be written as in the engine's docs, with their leading dashes.
    return value.lstrip("-") if isinstance(value, str) else value


# `monitoring.grafana_repository: bundle`: Grafana's .deb from the bundle's slot, no repository.
FROM_BUNDLE = "bundle"


def _apt_source(value: str) -> str:
    """A URL, optionally followed by the suite and components of an apt source line; or `bundle`."""
    _no_control(value)
    if value == FROM_BUNDLE:
        return value
    url, *words = value.split(" ")
    if not _URL.fullmatch(url) or not url.startswith(("http://", "https://")) or not all(
        _WORD.fullmatch(w) for w in words
    ):
        raise ValueError(
            "is an http(s) URL optionally followed by a suite and components, each made of "
            "letters, digits and . _ / - (e.g. https://mirror.example.internal/grafana stable main), "
            "or bundle (from artifact_mirror's bundle)"
        )
    return value


_URL = re.compile(r"[a-z][a-z0-9+.-]*://[A-Za-z0-9._~:@/%+=,-]*")
_WORD = re.compile(r"[A-Za-z0-9._/-]+")

# Free text (a description, an engine arg's value): anything printable on one line. Where it
# reaches a file it is quoted for that file (systemd_quote, tojson, shlex.quote).
Text = Annotated[str, AfterValidator(_no_control)]
# A word of a network interface, libvirt network, image or VLAN parent name.
Word = Annotated[
    str,
    _shaped(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}", "is a name of letters, digits and . _ - (at most 64)"),
]
# A login name: useradd's rules, which also keep it out of reach of sudoers syntax.
User = Annotated[
    str,
    _shaped(r"[a-z_][a-z0-9_-]{0,31}", "is a user name of lowercase letters, digits, _ and - (e.g. podium)"),
]
# An absolute path on a node: it reaches mount, fstab and shell commands.
AbsPath = Annotated[
    str,
    _shaped(
        r"(?!.*/\.\.?(/|$))/[A-Za-z0-9._/+-]*",
        "is an absolute path of letters, digits and . _ / + -, without . or .. parts (e.g. /srv/podium)",
    ),
]
# A path on the control machine (an SSH key, a kubeconfig, a model folder or tiny:KIND).
LocalPath = Annotated[
    str,
    _shaped(
        r"[A-Za-z0-9._/~+-][A-Za-z0-9._/~+:@=-]*",
        "is a path of letters, digits and . _ / ~ + : @ = - (e.g. ~/.ssh/podium_ed25519)",
    ),
]
# A URL without blanks, quotes or shell metacharacters (an artifact mirror, a webhook, a hypervisor).
Url = Annotated[
    str,
    _shaped(
        _URL.pattern,
        "is a URL of letters, digits and . _ ~ : @ / % + = , - (e.g. https://mirror.example.internal/podium)",
    ),
]
AptSource = Annotated[str, AfterValidator(_apt_source)]
# A host name or address (an NTP server).
Host = Annotated[
    str,
    _shaped(
        r"[A-Za-z0-9]([A-Za-z0-9.-]{0,251}[A-Za-z0-9])?",
        "is a host name or IPv4 address (e.g. ntp1.example.internal or 192.0.2.1)",
    ),
]
# Who may connect: a node of the stack by name, or an IPv4 address or subnet.
Source = Annotated[str, AfterValidator(_source)]
# A Kubernetes label key and value (k3s node labels).
LabelKey = Annotated[
    str,
    _shaped(
        r"([a-z0-9]([a-z0-9.-]{0,251}[a-z0-9])?/)?[A-Za-z0-9]([A-Za-z0-9._-]{0,61}[A-Za-z0-9])?",
        "is a label key: an optional DNS prefix and /, then letters, digits and . _ - (e.g. rack)",
    ),
]
LabelValue = Annotated[
    str,
    _shaped(
        r"([A-Za-z0-9]([A-Za-z0-9._-]{0,61}[A-Za-z0-9])?)?",
        "is a label value of letters, digits and . _ - (at most 63, e.g. r1)",
    ),
]
# An engine flag without its dashes (`trust-remote-code`, `ctx-size`).
ArgKey = Annotated[
    str,
    BeforeValidator(_arg_key),
    _shaped(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}", "is an engine flag of letters, digits and . _ - (e.g. ctx-size)"),
]
# A version of stacks/versions.yaml: Debian and PyPI versions both fit.
Version = Annotated[
    str,
    _shaped(r"[A-Za-z0-9][A-Za-z0-9.+~:_-]{0,63}", "is a version of letters, digits and . + ~ : _ - (e.g. 2.8.2)"),
]
# A Python dotted name (a type a skops file may hold).
PythonName = Annotated[
    str,
    _shaped(
        r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*",
        "is a dotted Python name (e.g. sklearn.linear_model.LogisticRegression)",
    ),
]
