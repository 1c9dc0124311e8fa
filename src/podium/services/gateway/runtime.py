"""The running gateway's state: config, store, metrics, replicas, key cache, upstream clients."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import logging
import queue
import secrets
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
from sqlalchemy import Connection

from podium.services.gateway import errors
from podium.services.gateway.budgets import team_and_budget_asks
from podium.services.gateway.config import GatewayConfig
from podium.services.gateway.keys import ApiKey, KeyCache, hash_secret, lookup_op
from podium.services.gateway.limits import EffectiveLimits, admit_op, cleanup_op
from podium.services.gateway.metering import UsageRecord, record_op
from podium.services.gateway.metrics import GatewayMetrics
from podium.services.gateway.replicas import HealthChecker, ReplicaSet
from podium.services.gateway.reservation import Reservation
from podium.services.gateway.spool import UsageSpool, spool_entry
from podium.services.gateway.store import Store
from podium.services.gateway.upstream import UpstreamPool
from podium.services.gateway.usage import rollup_op
from podium.services.gateway.workers import WorkerBoard

log = logging.getLogger("podium.gateway")
T = TypeVar("T")


@dataclass
class Call:
    """One authorised request on its way through the gateway."""

    request_id: str
    key: ApiKey
    limits: EffectiveLimits
    model: str
    replicas: ReplicaSet
    endpoint: str
    started: float  # perf_counter
    ts: float  # wall clock, for the record
    counted: bool = False  # in the request metrics already
    reservation: Reservation | None = None  # held against the key until the record settles it
    recorded: bool = False  # its usage record has been written or queued
    body: dict[str, Any] | None = None  # the request as sent upstream, to count its prompt
    body_bytes: int = 0

    def usage(self, replica: str, status: int, tokens: tuple[int, int] | None,
              ttft: float | None = None) -> UsageRecord:
        """This request's usage record as it stands now."""
        prompt, completion = tokens or (0, 0)
        return UsageRecord(
            ts=self.ts,
            request_id=self.request_id,
            key_id=self.key.id,
            key_name=self.key.name,
            model=self.model,
            endpoint=self.endpoint,
            replica=replica,
            status=status,
            prompt_tokens=prompt,
            completion_tokens=completion,
            latency_ms=(time.perf_counter() - self.started) * 1000.0,
            ttft_ms=None if ttft is None else ttft * 1000.0,
        )


class Gateway:
    """Everything a request handler needs, built from the config and started with the app."""

    def __init__(self, config: GatewayConfig, board: WorkerBoard | None = None,
                 metrics_dir: Path | None = None) -> None:
        self.config = config
        self.metrics = GatewayMetrics(metrics_dir)
        # Console logins every worker sees, where several serve (None: the console keeps its own).
        self.sessions = board.sessions if board is not None else None
        self.store = Store(config.store)
        self.admin_hash = config.admin_token_hash()
        self.keys = KeyCache(config.key_cache_s)
        self.models = {
            name: ReplicaSet(name, model, config.health, self.metrics, board)
            for name, model in config.models.items()
        }
        self.health = HealthChecker(list(self.models.values()), config.health)
        self.in_flight = 0
        self._seq = 0
        self._id_prefix = secrets.token_hex(6)
        self._ids = 0
        self._tasks: list[asyncio.Task[None]] = []
        self.spool = UsageSpool(config.state_dir)
        # Records still being counted or committed after their response ended.
        self._billing: set[asyncio.Task[None]] = set()
        self.json_client: aiohttp.ClientSession | None = None
        self.stream_client: aiohttp.ClientSession | None = None
        self.upstream: UpstreamPool | None = None

    async def start(self) -> None:
        await asyncio.to_thread(self.store.create_schema)
        # Records spooled before a crash or while the store was away go in before any new one.
        await self._replay_spool()
        self.store.start()
        t = self.config.timeouts
        timeout = aiohttp.ClientTimeout(total=None, connect=t.connect_s, sock_connect=t.connect_s)
        # Non-streamed answers reuse connections, dropped well before the engines' own
        # keep-alive timeout (5 s in llama-server and uvicorn) so none is closed under us.
        self.upstream = UpstreamPool(t.connect_s, keepalive_s=2.0)
        self.json_client = aiohttp.ClientSession(
            timeout=timeout,
            connector=aiohttp.TCPConnector(limit=0, keepalive_timeout=2.0),
            auto_decompress=False,
            skip_auto_headers=("User-Agent",),
        )
        # llama-server closes the connection after every streamed response: never reuse one.
        self.stream_client = aiohttp.ClientSession(
            timeout=timeout,
            connector=aiohttp.TCPConnector(limit=0, force_close=True),
            auto_decompress=False,
            skip_auto_headers=("User-Agent",),
        )
        self.health.start()
        loop = asyncio.get_running_loop()
        self._tasks.append(loop.create_task(self._housekeeping()))
        self._tasks.append(loop.create_task(self._spool_retries()))

    async def stop(self) -> None:
        await self.health.stop()
        if self._billing:
            # Counting and committing a record takes seconds at most; each spools on failure.
            await asyncio.wait(self._billing, timeout=30)
        for task in self._tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for client in (self.json_client, self.stream_client):
            if client is not None:
                await client.close()
        if self.upstream is not None:
            self.upstream.close()
        await asyncio.to_thread(self.store.close)

    def begin_call(self) -> None:
        """Count a request in flight; refuse it with 503 past the configured bound."""
        if self.in_flight >= self.config.max_in_flight:
            raise errors.unavailable(
                f"the gateway is serving its maximum of {self.config.max_in_flight} requests"
            )
        self.in_flight += 1
        self.metrics.in_flight.set(self.in_flight)

    def end_call(self) -> None:
        self.in_flight -= 1
        self.metrics.in_flight.set(self.in_flight)

    def next_seq(self) -> int:
        self._seq += 1
        return self._seq

    def new_request_id(self) -> str:
        # A random prefix per gateway process and a counter: unique without a system call
        # per request (os.urandom cost more than a tenth of a request's CPU).
        self._ids += 1
        return f"{self._id_prefix}{self._ids & 0xFFFFFFFF:08x}"

    def check_admin(self, authorization: str | None) -> None:
        if self.admin_hash is None:
            raise errors.GatewayError(
                403, "the admin API is disabled: set admin_token_file in the gateway config",
                "permission_error", code="admin_disabled",
            )
        token = _bearer(authorization)
        if token is None or not hmac.compare_digest(
            hashlib.sha256(token.encode()).hexdigest(), self.admin_hash
        ):
            raise errors.unauthorized("the admin token is missing or wrong")

    async def authenticate(self, authorization: str | None) -> ApiKey:
        secret = _bearer(authorization)
        if secret is None:
            raise errors.unauthorized(
                "no API key given; send it as 'Authorization: Bearer pdm-...'"
            )
        key_hash = hash_secret(secret)
        now = time.monotonic()
        hit, key = self.keys.get(key_hash, now)
        if not hit:
            key = await self._store_call(lookup_op(key_hash))
            self.keys.put(key_hash, key, now)
        if key is None:
            raise errors.unauthorized("the API key is not valid")
        state = key.state(time.time())
        if state != "active":
            raise errors.unauthorized(f"the API key {key.name!r} is {state}")
        return key

    async def admit(self, key: ApiKey, request_id: str, tokens: int = 0,
                    cost: int = 0) -> tuple[EffectiveLimits, Reservation | None]:
        """Reserve a request's worst case (tokens, and `cost` in millionths) against its key's
        and its team's limits and budgets, or refuse it with 429."""
        limits = EffectiveLimits.of(key, self.config.limits)
        if not limits.admits(key):
            return limits, None
        t = self.config.timeouts
        # A dead gateway's in-flight slot is freed once no request could still be running.
        hold_s = t.first_byte_s + t.read_s * 10
        now = time.time()
        extra = (team_and_budget_asks(key, now, tokens, cost)
                 if key.budget is not None or key.team_limits is not None else ())
        found = await self._store_call(
            admit_op(key, limits, now, request_id, tokens, hold_s, extra, cost))
        if not isinstance(found, Reservation):
            raise errors.rate_limited(found.message, found.retry_after_s, found.code)
        return limits, found

    async def record(self, call: Call, record: UsageRecord) -> None:
        """Commit a usage record, or spool it when the store cannot take it.

        Raises GatewayError(503) only when neither the store nor the spool took it.
        """
        call.recorded = True
        record.price_with(self.config.models[call.model].price)
        try:
            await self.store.run(record_op(record, call.reservation))
        except Exception as exc:
            self.metrics.usage_write_failures.inc()
            log.error("usage record %s not stored, spooling it: %s", record.request_id, exc)
            try:
                await asyncio.to_thread(self.spool.append,
                                        spool_entry(record, call.reservation))
            except OSError as spool_exc:
                log.error("usage record %s not spooled to %s: %s", record.request_id,
                          self.spool.path, spool_exc)
                raise errors.unavailable(
                    "the usage store is unavailable; the request was not billed"
                ) from None
        self._count(call, record)

    def record_nowait(self, call: Call, record: UsageRecord) -> None:
        """Commit a record without waiting (client gone, response cut): it still commits."""
        self.bill_later(call, self._record_quietly(call, record))

    def bill_later(self, call: Call, billing: Coroutine[Any, Any, None]) -> None:
        """Run a coroutine that records the call, after its response; stop() waits for it."""
        call.recorded = True
        task = asyncio.get_running_loop().create_task(billing)
        self._billing.add(task)
        task.add_done_callback(self._billing.discard)

    async def _record_quietly(self, call: Call, record: UsageRecord) -> None:
        with contextlib.suppress(errors.GatewayError):
            await self.record(call, record)

    def _count(self, call: Call, record: UsageRecord) -> None:
        call.counted = True
        m = self.metrics
        model, key = call.model, call.key.name
        m.child(m.requests, model, key, str(record.status)).inc()
        m.child(m.latency, model).observe(record.latency_ms / 1000.0)
        if record.prompt_tokens:
            m.child(m.tokens, model, key, "prompt").inc(record.prompt_tokens)
        if record.completion_tokens:
            m.child(m.tokens, model, key, "completion").inc(record.completion_tokens)
        if record.cost:
            m.child(m.cost, model, key, call.key.team or "").inc(record.cost)

    async def _store_call(self, op: Callable[[Connection], T]) -> T:
        try:
            return await self.store.run(op)
        except queue.Full:
            raise errors.unavailable("the gateway's store is overloaded; retry shortly") from None
        except errors.GatewayError:
            raise
        except Exception as exc:
            log.error("store call failed: %s", exc)
            raise errors.unavailable("the gateway's store is unavailable; retry shortly") from None

    async def _replay_spool(self) -> None:
        try:
            await asyncio.to_thread(self.spool.replay, self.store)
        except Exception as exc:
            log.warning("usage spool %s not replayed yet (%s); will retry", self.spool.path, exc)

    async def _spool_retries(self) -> None:
        while True:
            await asyncio.sleep(self.config.usage.spool_retry_s)
            if self.spool.pending():
                await self._replay_spool()

    async def _housekeeping(self) -> None:
        retention = self.config.usage
        while True:
            try:
                moved = total = await self.store.run(rollup_op(retention.retention_days))
                while moved:  # in batches, so no transaction holds the store for long
                    moved = await self.store.run(rollup_op(retention.retention_days))
                    total += moved
                await self.store.run(cleanup_op())
                if total:
                    log.info("rolled up %d usage records older than %d days", total,
                             retention.retention_days)
            except Exception as exc:
                log.warning("usage rollup failed, will retry: %s", exc)
            await asyncio.sleep(retention.rollup_interval_s)


def _bearer(authorization: str | None) -> str | None:
    if not authorization:
        return None
    scheme, _, value = authorization.partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        return None
    return value.strip()
