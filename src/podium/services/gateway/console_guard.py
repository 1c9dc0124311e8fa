"""Who may use the console: the admin sources, a logged-in session, a CSRF token on each change;
and the headers (CSP and others) every console answer carries."""

from __future__ import annotations

import ipaddress
import json
import urllib.parse
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from podium.services.gateway import errors
from podium.services.gateway.admin import CONSOLE_SESSION
from podium.services.gateway.config import Console
from podium.services.gateway.console_sessions import ConsoleSession, SessionBook
from podium.services.gateway.runtime import Gateway

COOKIE = "podium_console"
PREFIX = "/console"
# No script at all, no inline style, nothing from anywhere but the console itself.
CSP = ("default-src 'self'; script-src 'none'; object-src 'none'; base-uri 'none';"
       " form-action 'self'; frame-ancestors 'none'")
HEADERS = {
    "content-security-policy": CSP,
    "x-content-type-options": "nosniff",
    # Not no-referrer: under it Chromium sends its forms' Origin as "null", which same_origin()
    # refuses; same-origin still tells no other site where an operator came from.
    "referrer-policy": "same-origin",
    "x-frame-options": "DENY",
    # Pages show keys and usage; a shared browser's cache must not keep them.
    "cache-control": "no-store",
}


class SourceGuard:
    """Answers only clients in `sources` (403 to others, before any route or cookie is read),
    and adds HEADERS to every answer."""

    def __init__(self, app: ASGIApp, console: Console) -> None:
        self.app = app
        self.sources = console.sources

    def admits(self, scope: Scope) -> bool:
        client = scope.get("client")
        if not client:
            return False
        try:
            address = ipaddress.ip_address(client[0])
        except ValueError:
            return False
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        return any(address in net for net in self.sources)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                given = list(message.get("headers", []))
                # Only a route that says how it may be cached (the stylesheet) is cached.
                keep = {b"cache-control"} & {k.lower() for k, _ in given}
                message["headers"] = [
                    *(h for h in given if h[0].decode().lower() not in HEADERS
                      or h[0].lower() in keep),
                    *((k.encode(), v.encode()) for k, v in HEADERS.items()
                      if k.encode() not in keep),
                ]
            await send(message)

        if not self.admits(scope):
            # The same sentence whatever the path, so nothing of the console shows from outside.
            refused = Response("the console answers the admin sources only\n", 403,
                               media_type="text/plain")
            await refused(scope, receive, with_headers)
            return
        await self.app(scope, receive, with_headers)


FORM_MAX = 64 * 1024


async def read_form(request: Request) -> dict[str, str]:
    """An url-encoded form (the console's only kind), parsed here rather than by Starlette,
    which would need python-multipart on every gateway node for it."""
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > FORM_MAX:
            raise errors.bad_request(f"the form is over {FORM_MAX} bytes")
    fields = urllib.parse.parse_qs(body.decode("utf-8", "replace"), keep_blank_values=True)
    return {k: v[0] for k, v in fields.items()}


def session_of(books: SessionBook, request: Request) -> ConsoleSession | None:
    return books.find(request.cookies.get(COOKIE))


def set_cookie(response: Response, session: ConsoleSession, lifetime_s: float) -> None:
    response.set_cookie(COOKIE, session.sid, max_age=int(lifetime_s), path=PREFIX,
                        secure=True, httponly=True, samesite="strict")


def forget_cookie(response: Response) -> None:
    response.delete_cookie(COOKIE, path=PREFIX, secure=True, httponly=True, samesite="strict")


def same_origin(request: Request) -> bool:
    """A POST from a page of another site is refused even before its CSRF token is read."""
    origin = request.headers.get("origin")
    if origin is None or origin == "null":
        return origin is None
    host = request.headers.get("host", "")
    return origin.split("://", 1)[-1] == host


def refusal(request: Request, status: int, message: str) -> Response:
    if request.url.path.startswith(f"{PREFIX}/api/"):
        return JSONResponse({"error": {"message": message}}, status)
    return Response(message + "\n", status, media_type="text/plain")


Page = Callable[[Request, ConsoleSession | None], Awaitable[Response]]


def reading(gw: Gateway, books: SessionBook, page: Page) -> Callable[[Request], Awaitable[Response]]:
    """A page: a session (or, for the JSON twins, the admin token as the CLI sends it)."""

    async def endpoint(request: Request) -> Response:
        session = session_of(books, request)
        if session is None:
            api = request.url.path.startswith(f"{PREFIX}/api/")
            if not api:
                return RedirectResponse(f"{PREFIX}/login", 303)
            try:
                gw.check_admin(request.headers.get("authorization"))
            except errors.GatewayError as exc:
                return refusal(request, 401, f"log in first, or send the admin token ({exc.message})")
        return await page(request, session)

    return endpoint


def changing(books: SessionBook, page: Page) -> Callable[[Request], Awaitable[Response]]:
    """A change (POST form): a session, this site's origin and the session's CSRF token."""

    async def endpoint(request: Request) -> Response:
        session = session_of(books, request)
        if session is None:
            return refusal(request, 401, "log in first: the console session is missing or expired")
        form = await read_form(request)
        if not same_origin(request) or not session.csrf_matches(form.get("csrf")):
            return refusal(request, 403, "the form's CSRF token does not match this session;"
                                         " reload the page and submit it again")
        request.state.form = form
        return await page(request, session)

    return endpoint


async def call_admin(request: Request, handler: Callable[..., Awaitable[Response]], gw: Gateway,
                     *, method: str = "GET", params: dict[str, str] | None = None,
                     query: str = "", body: Any = None) -> Any:
    """Run an admin API handler, the one the CLI reaches over HTTP, for the console's session.

    Its errors (GatewayError) reach the caller as they would reach the CLI.
    """
    raw = b"" if body is None else json.dumps(body).encode()
    scope = {
        **request.scope,
        "method": method,
        "path_params": params or {},
        "query_string": query.encode(),
        "headers": [(b"content-type", b"application/json"), (b"x-podium-actor", b"console"),
                    (b"content-length", str(len(raw)).encode())],
        CONSOLE_SESSION: True,
    }
    sent = False

    async def receive() -> Message:
        nonlocal sent
        if sent:
            return {"type": "http.disconnect"}
        sent = True
        return {"type": "http.request", "body": raw, "more_body": False}

    response = await handler(gw, Request(scope, receive))
    return json.loads(bytes(response.body))
