"""The control listener: the control machine drains an engine replica before changing it, and undrains it after.

Served on `admin_listen` only (never on the API's port), behind the admin token. A drained
replica takes no new request, retries included, and finishes those it holds; the control
machine waits for them (the drain call's `wait_s`) before it restarts the replica.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from podium.services.gateway import errors
from podium.services.gateway.errors import GatewayError
from podium.services.gateway.replicas import EngineReplica, ReplicaSet
from podium.services.gateway.runtime import Gateway

# A drain the control machine never lifted (its run was killed) ends by itself after this.
DEFAULT_HOLD_S = 1800.0
MAX_WAIT_S = 3600.0
# How often a drain with `wait_s` looks at the replica's requests in flight.
POLL_S = 0.05


def _copies(gw: Gateway, url: str) -> list[tuple[ReplicaSet, EngineReplica]]:
    """The replica at `url` in every model it serves (one engine may sit behind several names)."""
    url = url.rstrip("/")
    return [(rs, rs.replicas[url]) for rs in gw.models.values() if url in rs.replicas]


def replica_view(gw: Gateway, url: str) -> dict[str, Any]:
    found = _copies(gw, url)
    return {
        "replica": url.rstrip("/"),
        "models": sorted(rs.name for rs, _ in found),
        "healthy": all(r.healthy for _, r in found),
        "drained": any(r.drained for _, r in found),
        "in_flight": sum(r.in_flight() for _, r in found),
    }


def _all_urls(gw: Gateway) -> list[str]:
    return sorted({url for rs in gw.models.values() for url in rs.replicas})


async def _asked(gw: Gateway, request: Request) -> tuple[str, dict[str, Any]]:
    """The replica URL a drain or undrain names, checked against the gateway's own."""
    gw.check_admin(request.headers.get("authorization"))
    try:
        body = json.loads(await request.body() or b"null")
    except ValueError as exc:
        raise errors.bad_request(f"the request body is not valid JSON: {exc}") from None
    url = body.get("replica") if isinstance(body, dict) else None
    if not isinstance(url, str) or not url:
        raise errors.bad_request(
            'send {"replica": "http://ADDRESS:PORT"}, a replica URL from GET /admin/v1/replicas',
            "replica")
    if not _copies(gw, url):
        raise errors.GatewayError(
            404, f"replica {url!r} is not behind this gateway; its replicas: {_all_urls(gw)}",
            "invalid_request_error", param="replica", code="replica_not_found")
    return url, body


def _seconds(body: dict[str, Any], name: str, default: float) -> float:
    value = body.get(name, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= MAX_WAIT_S:
        raise errors.bad_request(
            f"{name} {value!r} must be a number of seconds from 0 to {MAX_WAIT_S:g}", name)
    return float(value)


async def list_replicas(gw: Gateway, request: Request) -> JSONResponse:
    gw.check_admin(request.headers.get("authorization"))
    return JSONResponse({"object": "list", "data": [replica_view(gw, u) for u in _all_urls(gw)]})


async def drain(gw: Gateway, request: Request) -> JSONResponse:
    """Take no new request to the replica for `hold_s`; with `wait_s`, answer once the requests
    it holds have finished or `wait_s` has passed (`in_flight` in the answer says which)."""
    url, body = await _asked(gw, request)
    hold_s = _seconds(body, "hold_s", DEFAULT_HOLD_S)
    wait_s = _seconds(body, "wait_s", 0.0)
    for _, replica in _copies(gw, url):
        replica.drain_until(time.monotonic() + hold_s)
    deadline = time.monotonic() + wait_s
    while replica_view(gw, url)["in_flight"] and time.monotonic() < deadline:
        await asyncio.sleep(POLL_S)
    return JSONResponse(replica_view(gw, url))


async def undrain(gw: Gateway, request: Request) -> JSONResponse:
    """Put the replica back, probed once at once: one ejected while it restarted returns now,
    not at the next probe round, so the control machine can drain the next replica safely."""
    url, _ = await _asked(gw, request)
    timeout = aiohttp.ClientTimeout(total=gw.config.health.timeout_s)
    async with aiohttp.ClientSession(
        timeout=timeout, connector=aiohttp.TCPConnector(force_close=True)
    ) as session:
        for rs, replica in _copies(gw, url):
            replica.drain_until(0.0)
            await rs.probe_one(session, replica)
    return JSONResponse(replica_view(gw, url))


Handler = Callable[[Gateway, Request], Awaitable[Response]]


def control_app(gw: Gateway) -> Starlette:
    """The control listener's app, sharing the API app's running gateway.

    Example: control = control_app(api.state.gateway)
    """

    def route(path: str, handler: Handler, methods: list[str]) -> Route:
        async def endpoint(request: Request) -> Response:
            try:
                return await handler(gw, request)
            except GatewayError as exc:
                return exc.response()

        return Route(path, endpoint, methods=methods)

    return Starlette(
        routes=[
            route("/admin/v1/replicas", list_replicas, ["GET"]),
            route("/admin/v1/replicas/drain", drain, ["POST"]),
            route("/admin/v1/replicas/undrain", undrain, ["POST"]),
        ],
        exception_handlers=errors.ROUTE_ERRORS,
    )
