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
