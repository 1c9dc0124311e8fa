"""Model references as users write them (`name:version`, `name:alias`, `name@sha256:...`)."""

from __future__ import annotations

import re
from dataclasses import dataclass

from podium.errors import InvalidInput

# Same rules as a stack's model name: it becomes a repository path and a directory name.
NAME = re.compile(r"^[a-z][a-z0-9-]{0,40}$")
# The OCI distribution spec's tag grammar.
TAG = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._-]{0,127}$")
DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")
REPOSITORY_PREFIX = "models/"
# Datasets live beside models, not among them: `podium model ls` lists only models/.
DATASET_PREFIX = "datasets/"


def check_name(name: str) -> str:
    if not NAME.match(name):
        raise InvalidInput(
            f"model name {name!r} is not allowed; use lower-case letters, digits and '-', "
            "starting with a letter (e.g. tinyllama)"
        )
    return name


def check_tag(tag: str, what: str = "version") -> str:
    if not TAG.match(tag):
        raise InvalidInput(
            f"{what} {tag!r} is not a valid tag; use letters, digits, '.', '_' and '-', "
            "at most 128 characters, not starting with '.' or '-' (e.g. v1 or 2024.06)"
        )
    return tag


def check_digest(digest: str) -> str:
    if not DIGEST.match(digest):
        raise InvalidInput(f"digest {digest!r} is not of the form sha256:<64 hex digits>")
    return digest


@dataclass(frozen=True)
class ModelRef:
    """One model version in the registry: by tag (version or alias) or by manifest digest."""

    name: str
    tag: str | None = None
    digest: str | None = None

    @property
    def repository(self) -> str:
        return REPOSITORY_PREFIX + self.name

    @property
    def reference(self) -> str:
        """What goes after /manifests/ in the registry API: the digest when known."""
        ref = self.digest or self.tag
        assert ref is not None
        return ref

    def __str__(self) -> str:
        return f"{self.name}@{self.digest}" if self.digest else f"{self.name}:{self.tag}"

    @classmethod
    def parse(cls, text: str) -> ModelRef:
        """`name:tag` or `name@sha256:<hex>`; a bare name is refused (which version?)."""
        if "@" in text:
            name, _, digest = text.partition("@")
            return cls(check_name(name), digest=check_digest(digest))
        name, sep, tag = text.partition(":")
        if not sep:
            raise InvalidInput(
                f"model reference {text!r} has no version; write NAME:VERSION, NAME:ALIAS "
                f"or NAME@sha256:DIGEST (e.g. {text}:v1)"
            )
        return cls(check_name(name), tag=check_tag(tag))


@dataclass(frozen=True)
class DatasetRef(ModelRef):
    """A fine-tuning dataset in the registry, pulled as a model is but kept under datasets/."""

    @property
    def repository(self) -> str:
        return DATASET_PREFIX + self.name
