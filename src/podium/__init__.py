"""Podium: declare a private AI appliance in one file, lay it down, verify it."""

__version__ = "0.1.0"
