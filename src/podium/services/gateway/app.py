"""The gateway's Starlette app: routes, authentication, authorisation, admission, errors."""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import prometheus_client
from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route
from starlette.types import Receive, Scope, Send

from podium.services.gateway import admin, errors, health, openapi, proxy
from podium.services.gateway.budgets import spend_op, worst_cost
from podium.services.gateway.config import GatewayConfig
from podium.services.gateway.errors import GatewayError
from podium.services.gateway.keys import ApiKey
from podium.services.gateway.replicas import ReplicaSet
from podium.services.gateway.reservation import worst_case
from podium.services.gateway.runtime import Call, Gateway
from podium.services.gateway.validation import check_infer, check_openai, parse_body
from podium.services.gateway.workers import WorkerBoard

log = logging.getLogger("podium.gateway")
MAX_BODY = 16 * 1024 * 1024
Handler = Callable[[Gateway, Request], Awaitable[Any]]


async def _read_body(request: Request) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > MAX_BODY:
        raise errors.GatewayError(413, f"the request body is over {MAX_BODY} bytes",
                                  "invalid_request_error")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY:
            raise errors.GatewayError(413, f"the request body is over {MAX_BODY} bytes",
                                      "invalid_request_error")
        chunks.append(chunk)
    return b"".join(chunks)


def _no_such_model(model: str) -> errors.GatewayError:
    # One answer for a model that does not exist and one the key may not use, so a key
    # cannot find out which models the gateway serves to others.
    return errors.not_found(
        f"the model {model!r} does not exist or this key may not use it", "model")


def _model_for(gw: Gateway, key: ApiKey, model: str, kind: str) -> ReplicaSet:
    replicas = gw.models.get(model)
    if replicas is None or not key.allows(model):
        raise _no_such_model(model)
    if replicas.config.kind != kind:
        where = "/v1 (OpenAI)" if replicas.config.kind == "llm" else f"/v2/models/{model}/infer"
        raise errors.bad_request(f"the model {model!r} is served on {where}", "model")
    return replicas


async def _proxied(
    gw: Gateway, request: Request, key: ApiKey, model: str, replicas: ReplicaSet,
    endpoint: str, started: float, method: str, path: str, body: bytes | None, *,
    reserve: int = 0, cost: int = 0, sent: dict[str, Any] | None = None, **kw: Any,
) -> Any:
    # The gateway's own bound first: a request it has no room for costs the key nothing.
    gw.begin_call()
    request_id = gw.new_request_id()
    try:
        limits, reservation = await gw.admit(key, request_id, reserve, cost)
    except BaseException:
        gw.end_call()
        raise
    call = Call(request_id, key, limits, model, replicas, endpoint, started, time.time(),
                reservation=reservation, body=sent, body_bytes=len(body or b""))
    request.state.call = call
    result: Any = None
    try:
        result = await proxy.forward(gw, call, method, path, body, **kw)
        return result
    finally:
        if not isinstance(result, proxy.StreamRelay):
            if not call.recorded:  # cancelled on its way: its reservation is still settled
                gw.record_nowait(call, call.usage("", 499, None))
            gw.end_call()


async def openai_request(gw: Gateway, request: Request) -> Any:
    started = time.perf_counter()
    endpoint = request.url.path
    key = await gw.authenticate(request.headers.get("authorization"))
    raw = await _read_body(request)
    body = parse_body(raw)
    check_openai(endpoint, body)
    model = body["model"]
    replicas = _model_for(gw, key, model, "llm")
    request.state.model = model
    request.state.key = key.name
    stream = bool(body.get("stream"))
    served = replicas.config.served_name
    changed = False
    if served and served != model:
        body["model"] = served
        changed = True
    reserve, cap = worst_case(endpoint, body, len(raw),
                              replicas.config.default_max_tokens)
    if cap is not None:
        # The engine gets the cap the reservation assumed, so the worst case holds.
        body["max_tokens"] = cap
        changed = True
    wants_usage = False
    if stream:
        options = body.get("stream_options") or {}
        wants_usage = bool(options.get("include_usage"))
        # Always ask the engine for usage, so streams are metered as the engine counted.
        body["stream_options"] = {**options, "include_usage": True}
        changed = True
    upstream = json.dumps(body).encode() if changed else raw
    return await _proxied(gw, request, key, model, replicas, endpoint, started, "POST", endpoint,
                          upstream, reserve=reserve, sent=body, stream=stream,
                          cost=worst_cost(replicas.config.price, len(raw), reserve),
                          strip_usage=stream and not wants_usage)


def _model_card(name: str) -> dict[str, Any]:
    return {"id": name, "object": "model", "created": 0, "owned_by": "podium"}


async def list_models(gw: Gateway, request: Request) -> Response:
    key = await gw.authenticate(request.headers.get("authorization"))
    data = [_model_card(name) for name in gw.models if key.allows(name)]
    return JSONResponse({"object": "list", "data": data})


async def get_model(gw: Gateway, request: Request) -> Response:
    key = await gw.authenticate(request.headers.get("authorization"))
    name = request.path_params["model"]
    if name not in gw.models or not key.allows(name):
        raise _no_such_model(name)
    return JSONResponse(_model_card(name))


async def v2_model(gw: Gateway, request: Request) -> Any:
    """/v2/models/{name}[/ready|/infer], proxied to the predictive engine (MLServer)."""
    started = time.perf_counter()
    key = await gw.authenticate(request.headers.get("authorization"))
    name = request.path_params["name"]
    replicas = _model_for(gw, key, name, "predictive")
    request.state.model = name
    request.state.key = key.name
    served = replicas.config.served_name or name
    tail = request.url.path.removeprefix(f"/v2/models/{name}")
    path = f"/v2/models/{served}{tail}"
    body = await _read_body(request) if request.method == "POST" else None
    if body is not None:
        check_infer(parse_body(body))  # MLServer answers bad tensors with 500s; refuse them here
    return await _proxied(gw, request, key, name, replicas, tail or "/v2/metadata", started,
                          request.method, path, body)


async def live(gw: Gateway, request: Request) -> Response:
    return JSONResponse({"live": True})


async def ready(gw: Gateway, request: Request) -> Response:
    down = [
        name for name, rs in gw.models.items() if not any(r.healthy for r in rs.replicas.values())
    ]
    if down:
        raise errors.unavailable(f"models without a healthy replica: {', '.join(down)}")
    return JSONResponse({"ready": True})


async def metrics(gw: Gateway, request: Request) -> Response:
    # Budgets are shared by every gateway on the store: read them as Prometheus asks.
    with contextlib.suppress(Exception):  # a store away must not take /metrics with it
        gw.metrics.set_budgets(await gw.store.run(spend_op(time.time())))
    return Response(gw.metrics.render(), media_type="text/plain; version=0.0.4")


async def openapi_json(gw: Gateway, request: Request) -> Response:
    # The document names every model served; only key holders may read that list.
    await gw.authenticate(request.headers.get("authorization"))
    return JSONResponse(
        openapi.document({name: rs.config.kind for name, rs in gw.models.items()})
    )


def _endpoint(gw: Gateway, handler: Handler) -> Callable[[Request], Awaitable[Any]]:
    async def endpoint(request: Request) -> Any:
        try:
            return await handler(gw, request)
        except GatewayError as exc:
            call = getattr(request.state, "call", None)
            if call is None or not call.counted:  # metered requests were counted with their record
                model = getattr(request.state, "model", "")
                key = getattr(request.state, "key", "")
                gw.metrics.requests.labels(model, key, str(exc.status)).inc()
            return exc.response()
        except ClientDisconnect:
            # The client left (or was cut off for sending too slowly) before its body ended;
            # nobody is there to read an answer.
            return Response(status_code=499)
        except Exception:
            log.exception("unexpected error on %s", request.url.path)
            return errors.GatewayError(500, "the gateway failed on this request; see its log",
                                       "server_error").response()

    return endpoint


class HotRoutes:
    """The API app, with the routes every inference request takes answered before it.

    Starlette's two middlewares, its route table and its per-route wrappers cost about a
    seventh of the CPU of a whole proxied request; these routes need none of it (their
    endpoint turns every error into its answer itself). Anything else, other methods on
    these paths included, goes to the Starlette app as before.
    """

    def __init__(self, app: Starlette, routes: dict[str, Callable[[Request], Awaitable[Any]]]
                 ) -> None:
        self.app = app
        self.routes = routes
        self.state = app.state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        endpoint = self.routes.get(scope["path"]) if scope["type"] == "http" else None
        if endpoint is None or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        response = await endpoint(Request(scope, receive, send))
        await response(scope, receive, send)


def create_apps(config: GatewayConfig, board: WorkerBoard | None = None,
                metrics_dir: Path | None = None) -> tuple[HotRoutes, Starlette]:
    """The API app and the metrics app of one gateway; the store and health checks start with
    the API app's lifespan. The metrics app has its own listener, which the firewall opens to
    the monitoring node only, so /metrics needs no credential there and is absent from the API.

    One of several workers gets the board they share and the folder of their metrics files.

    Example: api, metrics = create_apps(load_config(Path("gateway.yaml")))
    """
    # The *_created series double what /metrics carries and no dashboard reads them.
    prometheus_client.disable_created_metrics()  # type: ignore[no-untyped-call]
    gw = Gateway(config, board, metrics_dir)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await gw.start()
        grpc_server = None
        if config.grpc_listen is not None:
            # Imported here: grpcio and tritonclient are needed only where gRPC is served.
            from podium.services.gateway import grpc_service

            grpc_server = await grpc_service.start(gw)
        try:
            yield
        finally:
            if grpc_server is not None:
                await grpc_server.stop(config.shutdown_grace_s)
            await gw.stop()

    def route(path: str, handler: Handler, methods: list[str]) -> Route:
        return Route(path, _endpoint(gw, handler), methods=methods)

    routes: list[BaseRoute] = [
        route("/v1/models", list_models, ["GET"]),
        route("/v1/models/{model:path}", get_model, ["GET"]),
        route("/v1/chat/completions", openai_request, ["POST"]),
        route("/v1/completions", openai_request, ["POST"]),
        route("/v1/embeddings", openai_request, ["POST"]),
        route("/health", health.health, ["GET"]),
        route("/v2/health/live", live, ["GET"]),
        route("/v2/health/ready", ready, ["GET"]),
        route("/v2/models/{name}", v2_model, ["GET"]),
        route("/v2/models/{name}/ready", v2_model, ["GET"]),
        route("/v2/models/{name}/infer", v2_model, ["POST"]),
        route("/openapi.json", openapi_json, ["GET"]),
        route("/admin/v1/keys", admin.create_key, ["POST"]),
        route("/admin/v1/keys", admin.list_keys, ["GET"]),
        route("/admin/v1/keys/{name}", admin.revoke_key, ["DELETE"]),
        route("/admin/v1/keys/{name}", admin.show_key, ["GET"]),
        route("/admin/v1/keys/{name}", admin.update_key, ["PATCH"]),
        route("/admin/v1/keys/{name}/rotate", admin.rotate_key, ["POST"]),
        route("/admin/v1/audit", admin.audit_log, ["GET"]),
        route("/admin/v1/audit", admin.audit_report, ["POST"]),
        route("/admin/v1/audit/verify", admin.audit_verify, ["GET"]),
        route("/admin/v1/teams", admin.list_teams, ["GET"]),
        route("/admin/v1/teams/{name}", admin.put_team, ["PUT"]),
        route("/admin/v1/teams/{name}", admin.remove_team, ["DELETE"]),
        route("/admin/v1/budgets", admin.budgets, ["GET"]),
        route("/admin/v1/usage", admin.usage_report, ["GET"]),
    ]
    if config.console is not None:  # jinja2 and the release records are the console's alone
        from podium.services.gateway.console import console_routes

        routes += console_routes(gw)
    app = Starlette(
        routes=routes,
        lifespan=lifespan,
        exception_handlers=errors.ROUTE_ERRORS,
    )
    app.state.gateway = gw
    hot = HotRoutes(app, {path: _endpoint(gw, openai_request) for path in (
        "/v1/chat/completions", "/v1/completions", "/v1/embeddings")})
    scrape = Starlette(
        routes=[route("/metrics", metrics, ["GET"])],
        exception_handlers=errors.ROUTE_ERRORS,
    )
    return hot, scrape

