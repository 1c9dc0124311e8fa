"""Releases: what each successful `podium up` or rollback laid down, numbered, kept, compared."""

from podium.releases.book import ReleaseBook
from podium.releases.record import ComponentRelease, Release

__all__ = ["ComponentRelease", "Release", "ReleaseBook"]
