"""Engine replicas per model: load, passive and active health checks, ejection and return."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass

import aiohttp

from podium.services.gateway.config import Health, ModelConfig
from podium.services.gateway.metrics import GatewayMetrics
from podium.services.gateway.routing import ReplicaStats, RouteRequest, choose_replica
from podium.services.gateway.workers import WorkerBoard

log = logging.getLogger("podium.gateway.replicas")


@dataclass
class EngineReplica:
    """One engine server behind a model, as the gateway sees it."""

    model: str
    url: str
    healthy: bool = True
    failures: int = 0
    outstanding: int = 0
    # Until when (monotonic clock) the control machine holds the replica drained while it
    # changes it (see draining.py); a drain ends by itself, so a change that never finished
    # (its `podium up` killed) cannot keep a replica out for ever.
    drained_until: float = 0.0
    # Where the gateway runs several workers: the drain and the load every worker sees.
    board: WorkerBoard | None = None

    @property
    def drained(self) -> bool:
        until = (self.drained_until if self.board is None
                 else self.board.drained_until(self.model, self.url))
        return time.monotonic() < until

    def drain_until(self, until: float) -> None:
        """Hold the replica drained until `until` (monotonic), in every worker."""
        self.drained_until = until
        if self.board is not None:
            self.board.drain(self.model, self.url, until)

    def in_flight(self) -> int:
        """Requests on this replica now, over every worker of the gateway."""
        if self.board is None:
            return self.outstanding
        return self.board.outstanding(self.model, self.url)


class ReplicaSet:
    """The replicas of one model and the rules that take them out and bring them back."""

    def __init__(
        self, name: str, config: ModelConfig, health: Health, metrics: GatewayMetrics,
        board: WorkerBoard | None = None,
    ) -> None:
        self.name = name
        self.config = config
        self.health = health
        self.metrics = metrics
        self.replicas = {url: EngineReplica(name, url, board=board) for url in config.replicas}
        self._urls = list(self.replicas)
        for url in self._urls:
            metrics.replica_healthy.labels(name, url).set(1)

    def pick(self, seq: int, tried: frozenset[str]) -> EngineReplica | None:
        stats = {
            url: ReplicaStats(r.healthy, r.in_flight(), r.drained)
            for url, r in self.replicas.items()
        }
        request = RouteRequest(seq, self.config.max_outstanding_per_replica, tried)
        url = choose_replica(self._urls, stats, request)
        return None if url is None else self.replicas[url]

    def acquire(self, replica: EngineReplica) -> None:
        self._count(replica, 1)

    def release(self, replica: EngineReplica) -> None:
        self._count(replica, -1)

    def _count(self, replica: EngineReplica, step: int) -> None:
        replica.outstanding += step
        if replica.board is not None:
            replica.board.publish(self.name, replica.url, replica.outstanding)
        self.metrics.replica_outstanding.labels(self.name, replica.url).set(replica.outstanding)

    def succeeded(self, replica: EngineReplica) -> None:
        self.metrics.upstream_requests.labels(self.name, replica.url, "ok").inc()
        replica.failures = 0
        if not replica.healthy:
            self._set(replica, True)

    def failed(self, replica: EngineReplica, why: str, *, probe: bool = False) -> None:
        if not probe:
            self.metrics.upstream_requests.labels(self.name, replica.url, "failed").inc()
        replica.failures += 1
        if replica.healthy and replica.failures >= self.health.eject_after:
            log.warning(
                "replica %s of model %s ejected after %d failures (last: %s)",
                replica.url, self.name, replica.failures, why,
            )
            self._set(replica, False)

    def _set(self, replica: EngineReplica, healthy: bool) -> None:
        if healthy and not replica.healthy:
            log.info("replica %s of model %s is back in rotation", replica.url, self.name)
        replica.healthy = healthy
        self.metrics.replica_healthy.labels(self.name, replica.url).set(1 if healthy else 0)

    async def probe(self, session: aiohttp.ClientSession) -> None:
        """One active check of every replica, ejected ones included (that is how they return)."""
        await asyncio.gather(*(self.probe_one(session, r) for r in self.replicas.values()))

    async def probe_one(self, session: aiohttp.ClientSession, replica: EngineReplica) -> bool:
        """One active check of one replica; True when it answered its health path with 200."""
        path = self.config.probe_path()
        try:
            async with session.get(replica.url + path) as resp:
                await resp.read()
                ok = resp.status == 200
                why = f"HTTP {resp.status} from {path}"
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            ok, why = False, f"{type(exc).__name__} on {path}"
        if ok:
            replica.failures = 0
            self._set(replica, True)
        else:
            self.failed(replica, why, probe=True)
        return ok


class HealthChecker:
    """Probes every model's replicas every `interval_s` until stopped."""

    def __init__(self, sets: list[ReplicaSet], health: Health) -> None:
        self.sets = sets
        self.health = health
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        timeout = aiohttp.ClientTimeout(total=self.health.timeout_s)
        # Probes are rare: a fresh connection each time avoids stale keep-alive sockets.
        connector = aiohttp.TCPConnector(force_close=True)
        async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
            while True:
                try:
                    await asyncio.gather(*(s.probe(session) for s in self.sets))
                except Exception:  # a probe round must never end the checker
                    log.exception("health check round failed")
                await asyncio.sleep(self.health.interval_s)
