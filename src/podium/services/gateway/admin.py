"""The admin API (create, list, revoke keys; read usage), behind the admin token."""

from __future__ import annotations

import json
import time
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse

from podium.errors import InvalidInput
from podium.services.gateway import errors
from podium.services.gateway.keys import KeySpec, create_op, list_op, new_secret, revoke_op
from podium.services.gateway.runtime import Gateway
from podium.services.gateway.usage import report_op


async def _store(gw: Gateway, op: Any) -> Any:
    try:
        return await gw.store.run(op)
    except InvalidInput as exc:
        # A name clash or unknown name: the caller's to fix, said in one sentence.
        status = 404 if str(exc).startswith("no key named") else 409
        raise errors.GatewayError(status, str(exc), "invalid_request_error") from None


async def create_key(gw: Gateway, request: Request) -> JSONResponse:
    gw.check_admin(request.headers.get("authorization"))
    try:
        spec = KeySpec.from_json(json.loads(await request.body() or b"null"))
    except ValueError as exc:  # InvalidInput is not a ValueError; JSON errors are
        raise errors.bad_request(f"the request body is not valid JSON: {exc}") from None
    except InvalidInput as exc:
        raise errors.bad_request(str(exc)) from None
    unknown = [m for m in spec.models if m != "*" and m not in gw.config.models]
    if unknown:
        raise errors.bad_request(
            f"models {unknown} are not served by this gateway; known: {sorted(gw.config.models)}",
            "models",
        )
    secret = new_secret()
    key = await _store(gw, create_op(spec, secret))
    body = key.to_json()
    body["key"] = secret  # the only time the secret leaves the gateway
    return JSONResponse(body, status_code=201)


async def list_keys(gw: Gateway, request: Request) -> JSONResponse:
    gw.check_admin(request.headers.get("authorization"))
    now = time.time()
    keys = await _store(gw, list_op())
    return JSONResponse({"object": "list", "data": [k.to_json(now) for k in keys]})


async def revoke_key(gw: Gateway, request: Request) -> JSONResponse:
    gw.check_admin(request.headers.get("authorization"))
    key = await _store(gw, revoke_op(request.path_params["name"]))
    return JSONResponse(key.to_json())


async def usage_report(gw: Gateway, request: Request) -> JSONResponse:
    gw.check_admin(request.headers.get("authorization"))
    q = request.query_params
    try:
        since = float(q["since"]) if "since" in q else None
        until = float(q["until"]) if "until" in q else None
    except ValueError:
        raise errors.bad_request("'since' and 'until' are epoch seconds") from None
    by = [b for b in q.get("by", "key,model").split(",") if b]
    try:
        lines = await _store(gw, report_op(since, until, by))
    except InvalidInput as exc:
        raise errors.bad_request(str(exc), "by") from None
    return JSONResponse({"object": "list", "data": [vars(line) for line in lines]})
