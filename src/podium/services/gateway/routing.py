"""Which replica serves a request: a pure function of the replicas, their stats and the request."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field


@dataclass(frozen=True)
class ReplicaStats:
    """What routing needs to know about one replica right now."""

    healthy: bool
    outstanding: int
    # Drained by the control machine before the replica is changed: it finishes what it holds
    # and takes nothing new, retries included.
    drained: bool = False


@dataclass(frozen=True)
class RouteRequest:
    """The request's side of the decision: replicas it already tried, a sequence number
    (to rotate among equally loaded replicas) and the per-replica cap on outstanding work."""

    seq: int
    max_outstanding: int
    tried: frozenset[str] = field(default_factory=frozenset)


def choose_replica(
    replicas: Sequence[str], stats: Mapping[str, ReplicaStats], request: RouteRequest
) -> str | None:
    """Least outstanding requests among healthy, undrained replicas with room, preferring untried ones.

    Returns None when no healthy, undrained replica has room. A replica already tried is chosen again
    only when it is the sole healthy one (a retry after a dropped keep-alive connection).

    Example:
        >>> s = {"a": ReplicaStats(True, 3), "b": ReplicaStats(True, 1)}
        >>> choose_replica(["a", "b"], s, RouteRequest(seq=0, max_outstanding=64))
        'b'
    """
    candidates = [
        url
        for url in replicas
        if (st := stats.get(url)) is not None
        and st.healthy
        and not st.drained
        and st.outstanding < request.max_outstanding
    ]
    fresh = [url for url in candidates if url not in request.tried]
    pool = fresh or candidates
    if not pool:
        return None
    least = min(stats[url].outstanding for url in pool)
    tied = [url for url in pool if stats[url].outstanding == least]
    return tied[request.seq % len(tied)]
