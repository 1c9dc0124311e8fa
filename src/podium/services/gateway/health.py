"""`GET /health`: whether the gateway can serve anything, for probes that hold no key."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from podium.services.gateway.runtime import Gateway


def can_serve(gw: Gateway) -> bool:
    """True while at least one replica of any model is healthy and not drained."""
    return any(
        r.healthy and not r.drained for rs in gw.models.values() for r in rs.replicas.values()
    )


async def health(gw: Gateway, request: Request) -> Response:
    # Load balancers and benchmark tools (GuideLLM's backend check) call this without a key,
    # so it says up or down and nothing else: no model names, counts or versions.
    if can_serve(gw):
        return JSONResponse({"status": "ok"})
    return JSONResponse({"status": "unavailable"}, status_code=503,
                        headers={"Retry-After": "1"})
