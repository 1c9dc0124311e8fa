"""`podium console`: the gateway's console served on the control machine's 127.0.0.1, where
its rollback form runs the control machine's rollback."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import ssl
from collections.abc import Callable
from typing import Any

import aiohttp
from aiohttp import web
from multidict import CIMultiDict
from rich.console import Console

from podium.errors import InvalidInput, PodiumError
from podium.services.gateway.console_guard import FORM_MAX, HEADERS, PREFIX
from podium.services.gateway.console_releases import LOCAL_CONSOLE

log = logging.getLogger(__name__)

ROLLBACK_PATH = f"{PREFIX}/releases/rollback"
# Per connection, not end to end: never passed on (RFC 9110 7.6.1). The local console's own
# header is dropped from what a browser sends, so only this console ever sets it.
HOP = {"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailer",
       "transfer-encoding", "upgrade", "content-length", LOCAL_CONSOLE}
Rollback = Callable[..., Any]


class _Lines(io.StringIO):
    """What the rollback prints, handed from its thread to the answer streaming it."""

    def __init__(self, loop: asyncio.AbstractEventLoop, queue: asyncio.Queue[str | None]) -> None:
        super().__init__()
        self.loop, self.queue = loop, queue

    def write(self, text: str) -> int:
        self.loop.call_soon_threadsafe(self.queue.put_nowait, text)
        return len(text)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.queue.put_nowait, None)


class LocalConsole:
    """The gateway's console at `upstream` (TLS checked against `ca_file`), passed through
    unchanged — login, session cookie, CSRF and CSP stay the gateway's — but for the rollback,
    which runs here after the gateway has accepted the form.

    Example: web.run_app(LocalConsole("stacks/lab", "https://10.77.0.10:8443", ca).app())
    """

    def __init__(self, stack_arg: str, upstream: str, ca_file: str | None,
                 rollback: Rollback | None = None) -> None:
        from podium.releases.rollback import rollback as run_rollback

        self.stack_arg = stack_arg
        self.upstream = upstream.rstrip("/")
        self.ssl: ssl.SSLContext | bool = ssl.create_default_context(cafile=ca_file) if ca_file else True
        self.rollback = rollback or run_rollback
        self.running = asyncio.Lock()
        self.client: aiohttp.ClientSession | None = None

    async def _open(self, app: web.Application) -> None:
        # No cookie jar: each browser's cookie goes through as it sent it, and none is kept here.
        self.client = aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar(), auto_decompress=False,
                                            timeout=aiohttp.ClientTimeout(total=120))

    async def _close(self, app: web.Application) -> None:
        if self.client is not None:
            await self.client.close()

    async def _forward(self, request: web.Request, body: bytes) -> web.Response:
        """The gateway's answer to `request`, headers and all (Host and Origin included, so the
        gateway's same-origin check sees the page the operator's browser is on)."""
        assert self.client is not None
        headers = [(k, v) for k, v in request.headers.items() if k.lower() not in HOP]
        headers.append((LOCAL_CONSOLE, "1"))
        try:
            async with self.client.request(request.method, self.upstream + request.rel_url.path_qs,
                                           headers=headers, data=body or None, ssl=self.ssl,
                                           allow_redirects=False) as answer:
                content = await answer.read()
                passed = CIMultiDict((k, v) for k, v in answer.headers.items() if k.lower() not in HOP)
                return web.Response(status=answer.status, body=content, headers=passed)
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            return web.Response(status=502, text=f"the gateway at {self.upstream} did not answer"
                                f" ({exc or type(exc).__name__}); check it with podium status\n")

    async def proxy(self, request: web.Request) -> web.Response:
        return await self._forward(request, await request.read())

    async def roll_back(self, request: web.Request) -> web.StreamResponse:
        body = await request.content.read(FORM_MAX + 1)
        if len(body) > FORM_MAX:
            return _said(413, f"the form is over {FORM_MAX} bytes")
        # The gateway checks the session, the origin, the CSRF token and the confirmation with
        # its own rules; anything but its yes is passed back to the operator unchanged.
        checked = await self._forward(request, body)
        if checked.status != 200:
            return checked
        # The release the gateway confirmed, after checking what the operator typed for it.
        to = int(json.loads(checked.body)["to"])  # type: ignore[arg-type]
        if self.running.locked():
            return _said(409, "a rollback started from this console is still running; wait for its"
                              " end (its page shows it) and look at the history again")
        async with self.running:
            return await self._stream(request, to)

    async def _stream(self, request: web.Request, to: int) -> web.StreamResponse:
        """Run the rollback (the CLI's function) in a thread; what it prints goes to the
        operator's page as it is printed, then its result."""
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[str | None] = asyncio.Queue()
        lines = _Lines(loop, queue)

        def run() -> None:
            out = Console(file=lines, width=100, highlight=False, force_terminal=False,
                          color_system=None)
            try:
                result = self.rollback(self.stack_arg, to, console=out)
                out.print(f"changes: {result.changes}")
                out.print(f"release: {result.release}")
            except PodiumError as exc:
                out.print(f"error: {exc}", markup=False)
            except Exception as exc:  # the operator's page must say it failed, whatever failed
                log.exception("rollback to release %s failed", to)
                out.print(f"error: the rollback to release {to} failed: {exc}", markup=False)
            finally:
                lines.close()

        answer = web.StreamResponse(status=200, headers={**HEADERS, "content-type": "text/plain; charset=utf-8"})
        await answer.prepare(request)
        done = loop.run_in_executor(None, run)
        gone = False
        while (text := await queue.get()) is not None:
            if gone:
                continue
            try:
                await answer.write(text.encode())
            except (ConnectionError, RuntimeError):
                gone = True  # the rollback goes on to its end: half a rollback is worse
        await done
        if not gone:
            await answer.write_eof()
        return answer

    def app(self) -> web.Application:
        app = web.Application(client_max_size=FORM_MAX)
        app.on_startup.append(self._open)
        app.on_cleanup.append(self._close)
        app.router.add_post(ROLLBACK_PATH, self.roll_back)
        app.router.add_route("*", "/{tail:.*}", self.proxy)
        return app


def _said(status: int, sentence: str) -> web.Response:
    return web.Response(status=status, text=sentence + "\n", headers=HEADERS)


def serve(stack_arg: str, port: int, print_url: Callable[[str], None]) -> None:
    """Serve the stack's gateway console on 127.0.0.1:`port` until interrupted."""
    from podium.gateway_access import gateway_url
    from podium.registry.ca import ca_certificate
    from podium.stack import load_stack

    stack = load_stack(stack_arg)
    upstream = gateway_url(stack)
    ca = str(ca_certificate(stack.name)) if upstream.startswith("https") else None
    console = LocalConsole(stack_arg, upstream, ca)
    try:
        sock = _bind(port)
    except OSError as exc:
        raise InvalidInput(f"--port {port}: 127.0.0.1:{port} cannot be listened on ({exc.strerror});"
                           " give a free port") from None
    print_url(f"http://127.0.0.1:{port}{PREFIX}/")
    web.run_app(console.app(), sock=sock, print=None, handle_signals=True)


def _bind(port: int) -> Any:
    import socket

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(("127.0.0.1", port))
    except OSError:
        sock.close()
        raise
    sock.listen(128)
    return sock
