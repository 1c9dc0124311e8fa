"""How the gateway listens: its two sockets, and the HTTP protocol that bounds what a client holds.

uvicorn's httptools protocol has a keep-alive timeout and nothing else: no limit on header
size, no deadline for a request's headers or body, and a response to a client that stops
reading waits on it for ever. `BoundedHttp` adds those bounds per connection, and refuses
connections past the configured total at once rather than after their headers.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import socket
import time
from asyncio import TimerHandle
from pathlib import Path
from typing import TYPE_CHECKING, Any

from starlette.types import ASGIApp, Receive, Scope, Send
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from podium.errors import InvalidInput
from podium.services.gateway.config import Connections, GatewayConfig
from podium.services.gateway.errors import error_body

if TYPE_CHECKING:
    from podium.services.gateway.workers import WorkerBoard

log = logging.getLogger("podium.gateway")
# How long a refused connection's remaining input is read and dropped before it is closed.
LINGER_S = 5.0
# The first socket a service manager passes (sd_listen_fds(3)).
LISTEN_FDS_START = 3


class _Notes:
    """Warnings about refused clients, at most one a second per kind, so a flood of bad
    clients cannot flood the log too; the ones left out are counted in the next."""

    def __init__(self) -> None:
        self.last: dict[str, float] = {}
        self.quiet: dict[str, int] = {}

    def warn(self, kind: str, peer: str, message: str) -> None:
        now = time.monotonic()
        if now - self.last.get(kind, -1.0) < 1.0:
            self.quiet[kind] = self.quiet.get(kind, 0) + 1
            return
        self.last[kind] = now
        more = self.quiet.pop(kind, 0)
        log.warning("connection from %s: %s%s", peer, message,
                    f" (and {more} more like it in the last second)" if more else "")


_notes = _Notes()


def _answer(status: int, reason: str, message: str) -> bytes:
    """A whole response written straight to the socket, for connections that never reach the app."""
    body = error_body(message, "invalid_request_error" if status < 500 else "server_error")
    head = (
        f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\n"
        f"content-length: {len(body)}\r\nconnection: close\r\n\r\n"
    )
    return head.encode() + body


class BoundedHttp(HttpToolsProtocol):
    """uvicorn's httptools protocol with header size, read and write deadlines, and a connection cap.

    `bounds` is set on a subclass per gateway (see `protocol_for`).
    """

    bounds: Connections = Connections()
    # Connections on these ports (the metrics and control listeners) do not count against the cap.
    uncapped_ports: frozenset[int] = frozenset()
    # Connections open now that count against the cap (one gateway per subclass).
    open_counted = 0
    # Where several workers serve: the cap is on all their connections together.
    board: WorkerBoard | None = None

    def __init__(self, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.counted = False
        self.header_bytes = 0
        self.in_headers = True
        self.in_body = False
        self.discarding = False
        self.read_deadline: TimerHandle | None = None
        self.write_deadline: TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self.counted = self.server is None or self.server[1] not in self.uncapped_ports
        if self.counted:
            self._count(1)
        open_now = self.open_counted if self.board is None else self.board.connections()
        if self.counted and open_now > self.bounds.max_connections:
            # Refused before a byte is read: a flood of idle connections costs one write each.
            _notes.warn("cap", self._peer(), f"refused: {open_now - 1} connections are open")
            transport.write(_answer(503, "Service Unavailable",
                                    "the gateway has too many connections open; retry shortly"))
            transport.close()
            return
        self._arm_read(self.bounds.header_timeout_s, "its request headers")

    def _count(self, step: int) -> None:
        type(self).open_counted += step
        if self.board is not None:
            self.board.hold_connections(self.open_counted)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.counted:
            self.counted = False
            self._count(-1)
        self._disarm_read()
        if self.write_deadline is not None:
            self.write_deadline.cancel()
            self.write_deadline = None
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self.discarding:
            return
        if self.in_headers:
            # Counted per read, so a body arriving with its headers counts until the parser
            # sees the headers end; the limit holds to within one read (at most 256 KiB).
            self.header_bytes += len(data)
        super().data_received(data)
        if self.transport.is_closing():
            return
        # Deadlines are armed only for a request still incomplete after this read, so the
        # usual request that arrives whole costs no timer at all.
        if self.in_headers:
            if self.header_bytes > self.bounds.max_header_bytes:
                self._too_large()
            elif self.header_bytes and self.read_deadline is None:
                self._arm_read(self.bounds.header_timeout_s, "its request headers")
        elif self.in_body and self.read_deadline is None:
            self._arm_read(self.bounds.body_timeout_s, "its request body")

    def on_headers_complete(self) -> None:
        self.in_headers = False
        self.in_body = True
        self._disarm_read()
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        self.in_body = False
        self._disarm_read()
        super().on_message_complete()

    def on_response_complete(self) -> None:
        # The next request on this connection starts its own header count and deadline,
        # armed by its first byte; until then uvicorn's keep-alive timeout applies.
        self.in_headers = True
        self.header_bytes = 0
        super().on_response_complete()

    def pause_writing(self) -> None:
        super().pause_writing()
        if self.write_deadline is None:
            self.write_deadline = self.loop.call_later(self.bounds.write_timeout_s, self._stalled)

    def resume_writing(self) -> None:
        if self.write_deadline is not None:
            self.write_deadline.cancel()
            self.write_deadline = None
        super().resume_writing()

    def _arm_read(self, seconds: float, what: str) -> None:
        self._disarm_read()
        self.read_deadline = self.loop.call_later(seconds, self._too_slow, seconds, what)

    def _disarm_read(self) -> None:
        if self.read_deadline is not None:
            self.read_deadline.cancel()
            self.read_deadline = None

    def _too_slow(self, seconds: float, what: str) -> None:
        self.read_deadline = None
        if self.transport.is_closing():
            return
        message = f"the client did not send {what} within {seconds:g} s"
        _notes.warn("slow", self._peer(), f"closed: {message}")
        if self.header_bytes and (self.cycle is None or not self.cycle.response_started):
            self.transport.write(_answer(408, "Request Timeout", message))
        self.transport.close()

    def _too_large(self) -> None:
        message = (f"the request line and headers are over {self.bounds.max_header_bytes} bytes;"
                   " send fewer or shorter headers")
        _notes.warn("large", self._peer(), f"closed: {message}")
        self._disarm_read()
        self.discarding = True
        self.transport.write(_answer(431, "Request Header Fields Too Large", message))
        if self.transport.can_write_eof():
            # Closing with unread input would reset the connection before the client reads
            # the 431; so end our side, drop what still arrives, and close after a while.
            self.transport.write_eof()
            self.loop.call_later(LINGER_S, self.transport.abort)
        else:
            self.transport.close()

    def _stalled(self) -> None:
        self.write_deadline = None
        _notes.warn("stalled", self._peer(),
                    f"cut off: it read nothing for {self.bounds.write_timeout_s:g} s")
        # abort(): close() would wait to flush the very buffer the client does not read.
        self.transport.abort()

    def _peer(self) -> str:
        return self.client[0] if self.client else "?"


def protocol_for(config: GatewayConfig, board: WorkerBoard | None = None) -> type[BoundedHttp]:
    """A BoundedHttp subclass carrying this gateway's bounds (over all workers, with a board)."""
    uncapped = frozenset({config.metrics_address()[1]}
                         | ({config.admin_listen.port} if config.admin_listen else set()))
    return type("GatewayHttp", (BoundedHttp,),
                {"bounds": config.connections, "uncapped_ports": uncapped, "board": board})


class Listeners:
    """One ASGI app per listener: requests to the ports in `others` (metrics, control) go to
    their app, the rest to `api`."""

    def __init__(self, api: ASGIApp, others: dict[int, ASGIApp]) -> None:
        self.api, self.others = api, others

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        server = scope.get("server")
        app = self.others.get(server[1]) if scope["type"] == "http" and server is not None else None
        await (app or self.api)(scope, receive, send)


def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket, as uvicorn would bind it itself."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise InvalidInput(
            f"the gateway cannot listen on {host}:{port} ({exc.strerror}); stop what holds the"
            " port or set another in the gateway config"
        ) from None
    sock.set_inheritable(True)
    return sock


def held_for_us(host: str, port: int) -> socket.socket | None:
    """The API's listening socket when systemd holds it for the gateway (podium-gateway.socket
    passes it as fd 3), else None.

    A socket the service manager holds outlives the gateway's process: a client that connects
    while the gateway restarts (a config change, an upgrade) waits in its queue for the next
    process instead of being refused.
    """
    if os.environ.get("LISTEN_PID") != str(os.getpid()) or os.environ.get("LISTEN_FDS") != "1":
        return None
    for name in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
        os.environ.pop(name, None)  # not for anything the gateway starts
    sock = socket.socket(fileno=LISTEN_FDS_START)
    bound, wanted = sock.getsockname()[:2], (host, port)
    if bound != wanted:
        sock.close()
        raise InvalidInput(
            f"the socket systemd passed the gateway listens on {bound[0]}:{bound[1]}, not on the config's"
            f" listen {host}:{port}; make podium-gateway.socket's ListenStream the listen address"
        )
    return sock


def run(config: GatewayConfig, log_level: str) -> None:
    """Serve the API and the metrics listener until SIGTERM or SIGINT: from this process, or
    from `config.workers` processes sharing its listening sockets.

    Example: run(load_config(Path("/etc/podium/gateway/gateway.yaml")), "info")
    """
    cores = os.cpu_count()
    if cores is not None and config.workers > cores:
        raise InvalidInput(
            f"the gateway config's workers is {config.workers}, more than this machine's"
            f" {cores} CPUs; set workers to {cores} or fewer"
        )
    api_socket = held_for_us(config.listen.host, config.listen.port)
    sockets = [api_socket or bind(config.listen.host, config.listen.port),
               bind(*config.metrics_address())]
    if config.admin_listen is not None:
        # The control machine's own listener: drains never share a port with the API.
        sockets.append(bind(config.admin_listen.host, config.admin_listen.port))
    if config.workers == 1:
        serve(config, log_level, sockets)
        return
    from prometheus_client.multiprocess import mark_process_dead

    from podium.services.gateway.console_sessions import SharedSessionBook
    from podium.services.gateway.workers import Supervisor, WorkerBoard, fresh_metrics_dir

    board = WorkerBoard(((name, url) for name, model in config.models.items()
                         for url in model.replicas), config.workers,
                        SharedSessionBook(config.console.session_s) if config.console else None)
    shared = fresh_metrics_dir(config.state_dir / "metrics")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(shared)

    def worker(index: int) -> None:
        from podium.services.gateway.metrics import share_between_workers

        board.me = index
        share_between_workers()
        serve(config, log_level, sockets, board, shared)

    log.info("gateway serving from %d worker processes", config.workers)
    code = Supervisor(config.workers, worker,
                      lambda pid: mark_process_dead(pid, str(shared)),  # type: ignore[no-untyped-call]
                      sockets).run()
    if code:
        raise SystemExit(code)


def serve(config: GatewayConfig, log_level: str, sockets: list[socket.socket],
          board: WorkerBoard | None = None, shared: Path | None = None) -> None:
    """One process serving the gateway on `sockets` (API, metrics, control if configured)."""
    import uvicorn

    from podium.services.gateway.app import create_apps
    from podium.services.gateway.draining import control_app

    api, metrics = create_apps(config, board, shared)
    others: dict[int, ASGIApp] = {config.metrics_address()[1]: metrics}
    if config.admin_listen is not None:
        others[config.admin_listen.port] = control_app(api.state.gateway)
    tls = {}
    if config.tls is not None:
        # The metrics and control listeners are TLS too, with the same stack CA as API calls.
        tls = {"ssl_certfile": str(config.tls.cert), "ssl_keyfile": str(config.tls.key)}
    settings = uvicorn.Config(
        Listeners(api, others),
        loop="uvloop",
        http=protocol_for(config, board),
        log_level=log_level,
        # Every request is already metered and counted; an access log line would double
        # the gateway's per-request work for no information.
        access_log=False,
        # Clients reach the gateway directly; no X-Forwarded-* rewriting per request.
        proxy_headers=False,
        server_header=False,
        timeout_keep_alive=config.connections.keep_alive_s,
        # SIGTERM: the sockets close, requests in flight (streams too) finish, up to this bound.
        timeout_graceful_shutdown=math.ceil(config.shutdown_grace_s),
        **tls,  # type: ignore[arg-type]
    )
    uvicorn.Server(settings).run(sockets=sockets)
