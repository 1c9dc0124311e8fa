"""The Open Inference Protocol v2 gRPC service (inference.GRPCInferenceService) on its own port.

Each call goes the REST way: the same key check, model access, limits, metering and metrics,
and the same replica choice, retries and replica health. It reaches the engine's own gRPC
endpoint as the same message where the model's config names one (MLServer's grpc_port), and
its REST API otherwise. The message classes and the service stubs are those tritonclient ships.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import grpc
from starlette.requests import Request
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc as pb_grpc

from podium.errors import InvalidInput
from podium.services.gateway import errors
from podium.services.gateway.app import MAX_BODY, _proxied
from podium.services.gateway.errors import GatewayError
from podium.services.gateway.grpc_tensors import infer_body, infer_response, metadata_response
from podium.services.gateway.grpc_upstream import EngineCall, EngineChannels
from podium.services.gateway.proxy import GRPC_ANSWER
from podium.services.gateway.runtime import Gateway
from podium.services.gateway.validation import check_infer

log = logging.getLogger("podium.gateway")
Reply = TypeVar("Reply")
# HTTP statuses of the REST path as gRPC status codes.
CODES = {
    400: grpc.StatusCode.INVALID_ARGUMENT, 401: grpc.StatusCode.UNAUTHENTICATED,
    403: grpc.StatusCode.PERMISSION_DENIED, 404: grpc.StatusCode.NOT_FOUND,
    413: grpc.StatusCode.INVALID_ARGUMENT, 422: grpc.StatusCode.INVALID_ARGUMENT,
    429: grpc.StatusCode.RESOURCE_EXHAUSTED, 499: grpc.StatusCode.CANCELLED,
    502: grpc.StatusCode.UNAVAILABLE, 503: grpc.StatusCode.UNAVAILABLE,
    504: grpc.StatusCode.DEADLINE_EXCEEDED,
}


def status_code(status: int) -> grpc.StatusCode:
    """The gRPC code for a REST status (other 4xx: FAILED_PRECONDITION; 5xx: INTERNAL)."""
    default = grpc.StatusCode.FAILED_PRECONDITION if status < 500 else grpc.StatusCode.INTERNAL
    return CODES.get(status, default)


def _authorization(context: grpc.aio.ServicerContext) -> str | None:
    for key, value in context.invocation_metadata() or ():
        if key == "authorization":
            return value if isinstance(value, str) else value.decode()
    return None


def _engine_error(status: int, payload: bytes) -> GatewayError:
    # MLServer answers {"error": "..."}; the gateway's own errors are OpenAI-shaped.
    try:
        detail = json.loads(payload).get("error")
        message = detail.get("message") if isinstance(detail, dict) else detail
    except (ValueError, AttributeError):
        message = None
    return GatewayError(status, str(message or f"the engine answered HTTP {status}"),
                        "invalid_request_error" if status < 500 else "server_error")


class InferenceService(pb_grpc.GRPCInferenceServiceServicer):  # type: ignore[misc]
    """ServerLive, ServerReady, ModelReady, ModelMetadata and ModelInfer for predictive models."""

    def __init__(self, gw: Gateway) -> None:
        self.gw = gw
        self.engines = EngineChannels()

    async def _answer(self, context: grpc.aio.ServicerContext, model: str,
                      handler: Callable[[dict[str, str]], Awaitable[Reply]]) -> Reply:
        seen: dict[str, str] = {}
        try:
            return await handler(seen)
        except GatewayError as exc:
            if not seen.get("counted"):  # metered calls were counted with their record
                self.gw.metrics.requests.labels(model, seen.get("key", ""), str(exc.status)).inc()
            await context.abort(status_code(exc.status), exc.message)
        except Exception:
            log.exception("unexpected error on gRPC call for model %r", model)
            await context.abort(grpc.StatusCode.INTERNAL,
                                "the gateway failed on this call; see its log")
        raise AssertionError("context.abort returns only by raising")

    async def _forward(self, context: grpc.aio.ServicerContext, seen: dict[str, str],
                       model: str, endpoint: str, tail: str, body: dict[str, Any] | None,
                       engine_call: Callable[[str], tuple[str, Any]] | None = None,
                       ) -> tuple[int, bytes, bool]:
        """(status, payload, whether the payload is the engine's gRPC reply): `engine_call`
        makes the method and request for the engine's gRPC endpoint from its model name."""
        started = time.perf_counter()
        key = await self.gw.authenticate(_authorization(context))
        seen["key"] = key.name
        replicas = self.gw.models.get(model)
        if replicas is None or not key.allows(model):
            # One answer for both, as on REST: a key cannot learn which models others use.
            raise GatewayError(403, f"the model {model!r} does not exist or this key may not "
                               "use it", "permission_error")
        if replicas.config.kind != "predictive":
            raise errors.bad_request(f"the model {model!r} is served on /v1 (OpenAI), not on "
                                     "the Open Inference Protocol", "model")
        if body is not None:
            check_infer(body)
        served = replicas.config.served_name or model
        path = f"/v2/models/{served}{tail}"
        method = "GET" if body is None else "POST"
        upstream = None
        if engine_call is not None and replicas.config.grpc_replicas is not None:
            upstream = EngineCall(self.engines, *engine_call(served))
        # Every replica of such a model takes the gRPC message: no JSON is made for it.
        raw = None if body is None or upstream is not None else json.dumps(body).encode()
        # The REST path wants a request to keep its call on; this one is never read otherwise.
        holder = Request({"type": "http", "method": method, "path": path, "headers": []})
        answer = await _proxied(self.gw, holder, key, model, replicas, endpoint, started,
                                method, path, raw, grpc=upstream)
        seen["counted"] = "yes"
        return int(answer.status_code), bytes(answer.body), answer.media_type == GRPC_ANSWER

    async def ServerLive(self, request: pb.ServerLiveRequest,
                         context: grpc.aio.ServicerContext) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=True)

    async def ServerReady(self, request: pb.ServerReadyRequest,
                          context: grpc.aio.ServicerContext) -> pb.ServerReadyResponse:
        # As GET /v2/health/ready: every model has a healthy replica.
        ready = all(any(r.healthy for r in rs.replicas.values())
                    for rs in self.gw.models.values())
        return pb.ServerReadyResponse(ready=ready)

    async def ModelReady(self, request: pb.ModelReadyRequest,
                         context: grpc.aio.ServicerContext) -> pb.ModelReadyResponse:
        async def ready(seen: dict[str, str]) -> pb.ModelReadyResponse:
            status, payload, proto = await self._forward(
                context, seen, request.name, "grpc/ready", "/ready", None,
                lambda served: ("ModelReady", pb.ModelReadyRequest(name=served)))
            if proto:
                return pb.ModelReadyResponse.FromString(payload)
            return pb.ModelReadyResponse(ready=status == 200)

        return await self._answer(context, request.name, ready)

    async def ModelMetadata(self, request: pb.ModelMetadataRequest,
                            context: grpc.aio.ServicerContext) -> pb.ModelMetadataResponse:
        async def metadata(seen: dict[str, str]) -> pb.ModelMetadataResponse:
            status, payload, proto = await self._forward(
                context, seen, request.name, "grpc/metadata", "", None,
                lambda served: ("ModelMetadata", pb.ModelMetadataRequest(name=served)))
            if status != 200:
                raise _engine_error(status, payload)
            if proto:
                # The engine names the model as it serves it; the client asked by its public name.
                answer = pb.ModelMetadataResponse.FromString(payload)
                answer.name = request.name
                return answer
            return metadata_response(request.name, json.loads(payload))

        return await self._answer(context, request.name, metadata)

    async def ModelInfer(self, request: pb.ModelInferRequest,
                         context: grpc.aio.ServicerContext) -> pb.ModelInferResponse:
        async def infer(seen: dict[str, str]) -> pb.ModelInferResponse:
            body = infer_body(request)

            def for_engine(served: str) -> tuple[str, pb.ModelInferRequest]:
                forwarded = pb.ModelInferRequest()
                forwarded.CopyFrom(request)
                forwarded.model_name = served
                return "ModelInfer", forwarded

            status, payload, proto = await self._forward(context, seen, request.model_name,
                                                         "grpc/infer", "/infer", body, for_engine)
            if status != 200:
                raise _engine_error(status, payload)
            if proto:
                answer = pb.ModelInferResponse.FromString(payload)
                answer.model_name = request.model_name
                return answer
            return infer_response(request.model_name, json.loads(payload))

        return await self._answer(context, request.model_name, infer)


async def start(gw: Gateway) -> grpc.aio.Server:
    """Serve the gRPC service on the config's grpc_listen, with its TLS when it has one.

    Example: server = await start(gw); ...; await server.stop(grace=30)
    """
    listen = gw.config.grpc_listen
    assert listen is not None
    server = grpc.aio.server(options=[("grpc.max_receive_message_length", MAX_BODY),
                                      ("grpc.max_send_message_length", MAX_BODY)])
    pb_grpc.add_GRPCInferenceServiceServicer_to_server(InferenceService(gw), server)
    address = f"{listen.host}:{listen.port}"
    try:
        tls = gw.config.grpc_tls or gw.config.tls
        if tls is not None:
            pair = (tls.key.read_bytes(), tls.cert.read_bytes())
            server.add_secure_port(address, grpc.ssl_server_credentials([pair]))
        else:
            server.add_insecure_port(address)
    except RuntimeError as exc:
        raise InvalidInput(f"the gateway cannot listen for gRPC on {address} ({exc}); stop what "
                           "holds the port or set grpc_listen.port to a free one") from exc
    await server.start()
    return server
