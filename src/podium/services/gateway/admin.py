"""The admin API (keys and their lifecycle, usage, the audit log), behind the admin token."""

from __future__ import annotations

import json
import re
import time
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse

from podium.errors import InvalidInput
from podium.services.gateway import audit, errors, teams
from podium.services.gateway.budgets import spend_op
from podium.services.gateway.keys import (
    DEFAULT_GRACE_S,
    KeySpec,
    create_op,
    list_op,
    new_secret,
    revoke_op,
    rotate_op,
    show_op,
    update_op,
)
from podium.services.gateway.runtime import Gateway
from podium.services.gateway.usage import report_op


async def _store(gw: Gateway, op: Any) -> Any:
    try:
        return await gw.store.run(op)
    except InvalidInput as exc:
        # A name clash or unknown name: the caller's to fix, said in one sentence.
        status = 404 if str(exc).startswith(("no key named", "no team named")) else 409
        raise errors.GatewayError(status, str(exc), "invalid_request_error") from None


# Set in a request's scope by the console (never from a client's bytes) once it has checked
# the operator's session and CSRF token: its changes take the admin API's own handlers.
CONSOLE_SESSION = "podium.console_session"


def authorised(gw: Gateway, request: Request) -> None:
    """The admin token, or a console session the console has checked."""
    if request.scope.get(CONSOLE_SESSION) is True:
        return
    gw.check_admin(request.headers.get("authorization"))


_ACTOR = re.compile(r"[^A-Za-z0-9@._ -]")


def actor(request: Request) -> str:
    """Who acts: the admin token, and the OS user the CLI names for itself (a claim, kept as
    written, since anyone holding the token can write any name)."""
    user = _ACTOR.sub("", request.headers.get("x-podium-actor", ""))[:64].strip()
    return f"admin-token ({user})" if user else "admin-token"


async def _body(request: Request) -> Any:
    try:
        return json.loads(await request.body() or b"null")
    except ValueError as exc:  # InvalidInput is not a ValueError; JSON errors are
        raise errors.bad_request(f"the request body is not valid JSON: {exc}") from None


def _check_models(gw: Gateway, models: Any) -> None:
    unknown = [m for m in models if m != "*" and m not in gw.config.models]
    if unknown:
        raise errors.bad_request(
            f"models {unknown} are not served by this gateway; known: {sorted(gw.config.models)}",
            "models",
        )


async def create_key(gw: Gateway, request: Request) -> JSONResponse:
    authorised(gw, request)
    try:
        spec = KeySpec.from_json(await _body(request))
    except InvalidInput as exc:
        raise errors.bad_request(str(exc)) from None
    _check_models(gw, spec.models)
    secret = new_secret()
    detail = {k: v for k, v in vars(spec).items() if k != "name" and v is not None}
    key = await _store(gw, audit.audited(create_op(spec, secret), actor(request), "key.create",
                                         spec.name, detail))
    body = key.to_json()
    body["key"] = secret  # the only time the secret leaves the gateway
    return JSONResponse(body, status_code=201)


async def show_key(gw: Gateway, request: Request) -> JSONResponse:
    authorised(gw, request)
    key = await _store(gw, show_op(request.path_params["name"]))
    return JSONResponse(key.to_json())


async def update_key(gw: Gateway, request: Request) -> JSONResponse:
    """PATCH: the fields given change (null clears a limit); 'disabled' disables or enables."""
    authorised(gw, request)
    changes = await _body(request)
    if not isinstance(changes, dict) or not changes:
        raise errors.bad_request("the body must be a JSON object of the settings to change")
    if isinstance(changes.get("models"), list):
        _check_models(gw, changes["models"])
    name = request.path_params["name"]
    action = audit.update_action(changes)
    try:
        op = update_op(name, changes)
    except InvalidInput as exc:
        raise errors.bad_request(str(exc)) from None
    key = await _store(gw, audit.audited(op, actor(request), action, name, changes))
    return JSONResponse(key.to_json())


async def rotate_key(gw: Gateway, request: Request) -> JSONResponse:
    authorised(gw, request)
    body = await _body(request) or {}
    grace = body.get("grace_s", DEFAULT_GRACE_S) if isinstance(body, dict) else None
    if isinstance(grace, bool) or not isinstance(grace, int | float):
        raise errors.bad_request("grace_s must be a number of seconds", "grace_s")
    name = request.path_params["name"]
    secret = new_secret()
    try:
        op = rotate_op(name, secret, float(grace))
    except InvalidInput as exc:
        raise errors.bad_request(str(exc), "grace_s") from None
    key = await _store(gw, audit.audited(op, actor(request), "key.rotate", name,
                                         {"grace_s": grace}))
    body = key.to_json()
    body["key"] = secret  # as at creation: shown once
    return JSONResponse(body)


async def list_keys(gw: Gateway, request: Request) -> JSONResponse:
    authorised(gw, request)
    now = time.time()
    keys = await _store(gw, list_op())
    return JSONResponse({"object": "list", "data": [k.to_json(now) for k in keys]})


async def revoke_key(gw: Gateway, request: Request) -> JSONResponse:
    authorised(gw, request)
    name = request.path_params["name"]
    key = await _store(gw, audit.audited(revoke_op(name), actor(request), "key.revoke", name))
    return JSONResponse(key.to_json())


async def audit_log(gw: Gateway, request: Request) -> JSONResponse:
    authorised(gw, request)
    try:
        since = float(request.query_params["since"]) if "since" in request.query_params else None
    except ValueError:
        raise errors.bad_request("'since' is epoch seconds", "since") from None
    entries = await _store(gw, audit.entries_op(since))
    return JSONResponse({"object": "list", "data": [e.to_json() for e in entries]})


async def audit_verify(gw: Gateway, request: Request) -> JSONResponse:
    authorised(gw, request)
    return JSONResponse((await _store(gw, audit.verify_op())).to_json())


async def audit_report(gw: Gateway, request: Request) -> JSONResponse:
    """The control machine's own actions (podium up, rollback, model changes)."""
    authorised(gw, request)
    body = await _body(request)
    if not isinstance(body, dict) or not isinstance(body.get("action"), str):
        raise errors.bad_request("the body must be a JSON object with 'action' and 'target'")
    detail = body.get("detail") or {}
    try:
        op = audit.report_op(actor(request), body["action"], str(body.get("target", "")),
                             detail if isinstance(detail, dict) else {"value": detail})
    except InvalidInput as exc:
        raise errors.bad_request(str(exc), "action") from None
    entry = await _store(gw, op)
    return JSONResponse(entry.to_json(), status_code=201)


async def usage_report(gw: Gateway, request: Request) -> JSONResponse:
    authorised(gw, request)
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


async def list_teams(gw: Gateway, request: Request) -> JSONResponse:
    authorised(gw, request)
    found = await _store(gw, teams.list_op())
    return JSONResponse({"object": "list", "data": [t.to_json() for t in found]})


async def put_team(gw: Gateway, request: Request) -> JSONResponse:
    """PUT: the team as given (created, or replaced whole)."""
    authorised(gw, request)
    name, data, who = request.path_params["name"], await _body(request), actor(request)
    try:
        put = teams.put_op(name, data)
    except InvalidInput as exc:
        raise errors.bad_request(str(exc)) from None
    if isinstance(data.get("models"), list):
        _check_models(gw, data["models"])

    def op(conn: Any) -> teams.Team:
        team, new = put(conn)
        audit.append(conn, who, "team.create" if new else "team.update", name, data)
        return team

    return JSONResponse((await _store(gw, op)).to_json())


async def remove_team(gw: Gateway, request: Request) -> JSONResponse:
    authorised(gw, request)
    name = request.path_params["name"]
    team = await _store(gw, audit.audited(teams.remove_op(name), actor(request), "team.remove",
                                          name))
    return JSONResponse(team.to_json())


async def budgets(gw: Gateway, request: Request) -> JSONResponse:
    """Every budget, with what admission counts against it in its current window."""
    authorised(gw, request)
    found = await _store(gw, spend_op(time.time()))
    return JSONResponse({"object": "list", "data": [s.to_json() for s in found]})
