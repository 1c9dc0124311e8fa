"""The gateway's one exception and its rendering as an OpenAI error body."""

from __future__ import annotations

import json

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

from podium.errors import PodiumError


class GatewayError(PodiumError):
    """A request the gateway refuses or cannot serve, with its HTTP status and OpenAI type.

    Example: raise GatewayError(413, "the request body is over 16777216 bytes",
    "invalid_request_error", param="messages")
    """

    def __init__(
        self,
        status: int,
        message: str,
        type_: str,
        *,
        code: str | None = None,
        param: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type_
        self.code = code
        self.param = param
        self.headers = headers or {}

    def body(self) -> bytes:
        return error_body(self.message, self.type, code=self.code, param=self.param)

    def response(self) -> Response:
        return Response(
            self.body(), self.status, headers=self.headers, media_type="application/json"
        )


def error_body(
    message: str, type_: str, *, code: str | None = None, param: str | None = None
) -> bytes:
    """The body OpenAI's API and SDKs expect: {"error": {message, type, param, code}}."""
    return json.dumps(
        {"error": {"message": message, "type": type_, "param": param, "code": code}}
    ).encode()


def bad_request(message: str, param: str | None = None) -> GatewayError:
    return GatewayError(400, message, "invalid_request_error", param=param)


def unauthorized(message: str) -> GatewayError:
    # OpenAI answers every authentication failure with 401 and code invalid_api_key.
    return GatewayError(
        401,
        message,
        "invalid_request_error",
        code="invalid_api_key",
        headers={"WWW-Authenticate": 'Bearer realm="podium"'},
    )


def not_found(message: str, param: str | None = None) -> GatewayError:
    return GatewayError(404, message, "invalid_request_error", code="model_not_found", param=param)


def rate_limited(message: str, retry_after_s: int, code: str) -> GatewayError:
    # "requests"/"tokens" for rate limits, "insufficient_quota" for an exhausted quota,
    # as in OpenAI's own 429 answers.
    type_ = "insufficient_quota" if code == "insufficient_quota" else "requests"
    if code == "tokens_per_minute":
        type_ = "tokens"
    return GatewayError(
        429,
        message,
        type_,
        code=code,
        headers={"Retry-After": str(max(1, retry_after_s))},
    )


def unavailable(message: str, retry_after_s: int = 1) -> GatewayError:
    return GatewayError(
        503,
        message,
        "server_error",
        code="service_unavailable",
        headers={"Retry-After": str(retry_after_s)},
    )


def bad_gateway(message: str) -> GatewayError:
    return GatewayError(502, message, "server_error", code="upstream_error")


def gateway_timeout(message: str) -> GatewayError:
    return GatewayError(504, message, "server_error", code="upstream_timeout")


async def route_error(request: Request, exc: Exception) -> Response:
    """A path or method no route takes, as an OpenAI error body like every other refusal."""
    assert isinstance(exc, HTTPException)
    code = "not_found" if exc.status_code == 404 else "method_not_allowed"
    return GatewayError(
        exc.status_code, f"{request.method} {request.url.path}: {exc.detail}",
        "invalid_request_error", code=code,
    ).response()


# Every listener's app (API, metrics, control) answers unknown paths and methods the same way.
ROUTE_ERRORS = {404: route_error, 405: route_error}
