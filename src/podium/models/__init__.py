"""Models Podium makes itself: tiny random-weight models for labs, tests and benchmarks."""

from podium.models.tiny import KINDS, TinyKind, make_tiny

__all__ = ["KINDS", "TinyKind", "make_tiny"]
