"""Replica choice: least outstanding among healthy replicas with room, untried first."""

from __future__ import annotations

from podium.services.gateway.routing import ReplicaStats, RouteRequest, choose_replica

A, B, C = "http://a", "http://b", "http://c"


def pick(stats: dict[str, ReplicaStats], seq: int = 0, tried: frozenset[str] = frozenset(),
         cap: int = 64) -> str | None:
    return choose_replica([A, B, C], stats, RouteRequest(seq, cap, tried))


def test_least_outstanding_wins() -> None:
    stats = {A: ReplicaStats(True, 5), B: ReplicaStats(True, 1), C: ReplicaStats(True, 3)}
    assert pick(stats) == B


def test_ejected_replicas_are_never_chosen() -> None:
    stats = {A: ReplicaStats(False, 0), B: ReplicaStats(True, 9), C: ReplicaStats(False, 0)}
    assert pick(stats) == B
    assert pick({url: ReplicaStats(False, 0) for url in (A, B, C)}) is None


def test_ties_rotate_with_the_request_sequence() -> None:
    stats = {url: ReplicaStats(True, 2) for url in (A, B, C)}
    assert [pick(stats, seq) for seq in range(4)] == [A, B, C, A]


def test_a_retry_goes_elsewhere_unless_nothing_else_is_healthy() -> None:
    stats = {A: ReplicaStats(True, 0), B: ReplicaStats(True, 4), C: ReplicaStats(False, 0)}
    assert pick(stats, tried=frozenset({A})) == B
    only_a = {A: ReplicaStats(True, 0), B: ReplicaStats(False, 0), C: ReplicaStats(False, 0)}
    assert pick(only_a, tried=frozenset({A})) == A


def test_full_replicas_are_skipped_and_all_full_means_none() -> None:
    stats = {A: ReplicaStats(True, 2), B: ReplicaStats(True, 1), C: ReplicaStats(True, 2)}
    assert pick(stats, cap=2) == B
    assert pick({url: ReplicaStats(True, 2) for url in (A, B, C)}, cap=2) is None


def test_drained_replicas_take_nothing_new_not_even_a_retry() -> None:
    stats = {A: ReplicaStats(True, 0, drained=True), B: ReplicaStats(True, 9),
             C: ReplicaStats(True, 5, drained=True)}
    assert pick(stats) == B
    assert pick(stats, tried=frozenset({B})) == B
    assert pick({url: ReplicaStats(True, 0, drained=True) for url in (A, B, C)}) is None
