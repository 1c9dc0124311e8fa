"""The operator console under /console: server-rendered pages, each with a JSON twin under
/console/api/, every read and change made by the admin API's own handlers (the CLI's path)."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import jinja2
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Mount, Route

from podium.errors import InvalidInput
from podium.services.gateway import admin, console_figures, console_releases, errors
from podium.services.gateway.config import Console
from podium.services.gateway.console_chart import bar_chart, days_back
from podium.services.gateway.console_guard import (
    PREFIX,
    SourceGuard,
    call_admin,
    changing,
    forget_cookie,
    read_form,
    reading,
    refusal,
    same_origin,
    set_cookie,
)
from podium.services.gateway.console_sessions import ConsoleSession, SessionBook
from podium.services.gateway.keys import SETTINGS, parse_expiry
from podium.services.gateway.runtime import Gateway
from podium.services.gateway.usage import GROUPINGS, UsageLine, to_csv

FILES = Path(__file__).with_name("console_templates")
PAGES = (("overview", ""), ("models", "models"), ("keys", "keys"), ("usage", "usage"),
         ("releases", "releases"), ("audit", "audit"))
_env = jinja2.Environment(loader=jinja2.FileSystemLoader(FILES), autoescape=True,
                          undefined=jinja2.StrictUndefined)
_css = (FILES / "console.css").read_bytes()
_icon = (FILES / "favicon.svg").read_bytes()
# The stylesheet's URL names its content, so it can be cached for good and never go stale.
CSS_URL = f"{PREFIX}/console.{hashlib.sha256(_css).hexdigest()[:12]}.css"


def _when(ts: float | None) -> str:
    return "-" if ts is None else time.strftime("%Y-%m-%d %H:%M", time.gmtime(ts))


_env.filters["when"] = _when


class ConsolePages:
    """The console of one gateway: its sessions and the handlers of its routes."""

    def __init__(self, gw: Gateway, console: Console) -> None:
        self.gw = gw
        self.console = console
        # Several workers share theirs (workers.py); one keeps its own.
        self.books = gw.sessions or SessionBook(console.session_s)

    def html(self, request: Request, template: str, session: ConsoleSession | None,
             status: int = 200, **data: Any) -> Response:
        page = _env.get_template(template).render(
            prefix=PREFIX, css=CSS_URL, pages=PAGES, here=request.url.path,
            csrf=session.csrf if session else "", **data)
        return HTMLResponse(page, status)

    def twin(self, request: Request, session: ConsoleSession | None, template: str,
             data: dict[str, Any]) -> Response:
        """The JSON twin under /console/api/, else the page."""
        if request.url.path.startswith(f"{PREFIX}/api/"):
            return JSONResponse(data)
        return self.html(request, template, session, **data)

    # Login and out.

    async def login_form(self, request: Request) -> Response:
        return self.html(request, "login.html", None, error="")

    async def login(self, request: Request) -> Response:
        token = (await read_form(request)).get("token", "")
        if not same_origin(request):
            return Response("a login from another site's page is refused\n", 403)
        try:
            self.gw.check_admin(f"Bearer {token}")
        except errors.GatewayError as exc:
            # Nothing of what was typed is echoed or logged.
            return self.html(request, "login.html", None, 401, error=exc.message)
        session = self.books.open()
        response = RedirectResponse(f"{PREFIX}/", 303)
        set_cookie(response, session, self.console.session_s)
        return response

    async def logout(self, request: Request, session: ConsoleSession | None) -> Response:
        self.books.close(session.sid if session else None)
        response = RedirectResponse(f"{PREFIX}/login", 303)
        forget_cookie(response)
        return response

    async def css(self, request: Request) -> Response:
        return Response(_css, media_type="text/css",
                        headers={"cache-control": "public, max-age=31536000, immutable"})

    async def icon(self, request: Request) -> Response:
        # Linked from every page, so browsers never ask the API's root for /favicon.ico.
        return Response(_icon, media_type="image/svg+xml")

    # Pages.

    async def overview(self, request: Request, session: ConsoleSession | None) -> Response:
        replicas = console_figures.replicas(self.gw)
        data = {"replicas": replicas, "up": sum(r["up"] for r in replicas),
                "down": sum(not r["up"] for r in replicas),
                **await console_figures.figures(self.gw)}
        return self.twin(request, session, "overview.html", data)

    async def models(self, request: Request, session: ConsoleSession | None) -> Response:
        releases, note = console_releases.node_releases(self.console.releases_dir)
        served = [
            {"name": name, "kind": m.kind, "served_name": m.served_name or name,
             "replicas": list(m.replicas), "price": m.price.model_dump()}
            for name, m in sorted(self.gw.config.models.items())
        ]
        data = {"models": served, "registry": console_releases.served_models(releases),
                "registry_note": note if not releases else
                f"as release {releases[-1].number} served them on this node"}
        return self.twin(request, session, "models.html", data)

    async def keys(self, request: Request, session: ConsoleSession | None,
                   created: dict[str, Any] | None = None, error: str = "",
                   status: int = 200) -> Response:
        keys = (await call_admin(request, admin.list_keys, self.gw))["data"]
        teams = (await call_admin(request, admin.list_teams, self.gw))["data"]
        data = {"keys": keys, "teams": teams, "created": created, "error": error,
                "models": sorted(self.gw.config.models)}
        if request.url.path.startswith(f"{PREFIX}/api/"):
            return JSONResponse({"keys": keys, "teams": teams})
        return self.html(request, "keys.html", session, status, **data)

    async def _key_change(self, request: Request, session: ConsoleSession | None,
                          change: Callable[[dict[str, str]], Awaitable[dict[str, Any] | None]],
                          shown_status: int = 201) -> Response:
        """Run one key change; a refusal is shown on the keys page with the admin API's status,
        a new secret (create, rotate) is answered on it, anything else goes back to the list."""
        try:
            shown = await change(request.state.form)
        except InvalidInput as exc:
            return await self.keys(request, session, error=str(exc), status=400)
        except errors.GatewayError as exc:
            return await self.keys(request, session, error=exc.message, status=exc.status)
        if shown is None:
            return RedirectResponse(f"{PREFIX}/keys", 303)
        # Answered, not redirected: this page is the only place the secret is ever shown.
        return await self.keys(request, session, created=shown, status=shown_status)

    async def create_key(self, request: Request, session: ConsoleSession | None) -> Response:
        async def create(form: dict[str, str]) -> dict[str, Any]:
            body = {"name": form.get("name", "").strip(), **_settings(form, clearing=False)}
            return dict(await call_admin(request, admin.create_key, self.gw, method="POST",
                                         body=body))

        return await self._key_change(request, session, create)

    async def rotate_key(self, request: Request, session: ConsoleSession | None) -> Response:
        async def rotate(form: dict[str, str]) -> dict[str, Any]:
            return dict(await call_admin(request, admin.rotate_key, self.gw, method="POST",
                                         params={"name": request.path_params["name"]}))

        return await self._key_change(request, session, rotate, shown_status=200)

    async def update_key(self, request: Request, session: ConsoleSession | None) -> Response:
        async def update(form: dict[str, str]) -> None:
            changes = _settings(form, clearing=True)
            if not changes:
                raise InvalidInput("fill in at least one setting to change ('-' clears one)")
            await call_admin(request, admin.update_key, self.gw, method="PATCH",
                             params={"name": form.get("name", "")}, body=changes)

        return await self._key_change(request, session, update)

    async def revoke_key(self, request: Request, session: ConsoleSession | None) -> Response:
        async def revoke(form: dict[str, str]) -> None:
            await call_admin(request, admin.revoke_key, self.gw, method="DELETE",
                             params={"name": request.path_params["name"]})

        return await self._key_change(request, session, revoke)

    def _usage_query(self, request: Request) -> tuple[list[str], int]:
        q = request.query_params
        by = [b for b in q.get("by", "key,model,day").split(",") if b]
        unknown = [b for b in by if b not in GROUPINGS]
        if unknown:
            raise errors.bad_request(f"by {unknown[0]!r} is not a grouping; use any of"
                                     f" {', '.join(GROUPINGS)}", "by")
        days = q.get("days", "14")
        if not days.isdigit() or not 1 <= int(days) <= 366:
            raise errors.bad_request(f"days {days!r} is not a number of days from 1 to 366", "days")
        return by, int(days)

    async def _usage_lines(self, request: Request, by: list[str], days: int) -> list[UsageLine]:
        since = time.time() - days * 86400
        found = await call_admin(request, admin.usage_report, self.gw,
                                 query=f"since={since:.0f}&by={','.join(by)}")
        return [UsageLine(**line) for line in found["data"]]

    async def usage(self, request: Request, session: ConsoleSession | None) -> Response:
        by, days = self._usage_query(request)  # a bad one: 400, said by failed() below
        lines = await self._usage_lines(request, by, days)
        per_day = {d: 0 for d in days_back(days)}
        for line in await self._usage_lines(request, ["day"], days):
            if line.day in per_day:
                per_day[line.day] = line.requests
        data: dict[str, Any] = {"by": by, "days": days, "groupings": GROUPINGS, "per_day": per_day,
                "lines": [vars(line) for line in lines]}
        if request.url.path.startswith(f"{PREFIX}/api/"):
            return JSONResponse(data)
        chart = bar_chart(per_day, f"requests per day, last {days} days (UTC)", "requests")
        return self.html(request, "usage.html", session, chart=chart, **data)

    async def usage_csv(self, request: Request, session: ConsoleSession | None) -> Response:
        by, days = self._usage_query(request)  # a bad one: 400, said by failed() below
        lines = await self._usage_lines(request, by, days)
        return Response(to_csv(lines, by), media_type="text/csv", headers={
            "content-disposition": f'attachment; filename="usage-{days}d.csv"'})

    async def releases(self, request: Request, session: ConsoleSession | None) -> Response:
        found, note = console_releases.node_releases(self.console.releases_dir)
        q = request.query_params
        changes: list[dict[str, Any]] | None = None
        error = ""
        if "a" in q and "b" in q:
            try:
                changes = console_releases.diff(found, int(q["a"]), int(q["b"]))
            except (ValueError, InvalidInput) as exc:
                error = str(exc) if isinstance(exc, InvalidInput) else "a and b are release numbers"
        data = {"history": console_releases.history(found), "note": note, "changes": changes,
                "a": q.get("a", ""), "b": q.get("b", ""), "error": error,
                "local": request.headers.get(console_releases.LOCAL_CONSOLE) == "1"}
        return self.twin(request, session, "releases.html", data)

    async def rollback_check(self, request: Request, session: ConsoleSession | None) -> Response:
        """The gateway never rolls back: `podium console` on the control machine asks here first,
        so a rollback form passes the gateway's own session, origin and CSRF checks (changing())
        and its typed confirmation, then that console runs the rollback itself."""
        if request.headers.get(console_releases.LOCAL_CONSOLE) != "1":
            return refusal(request, 403, "a rollback runs on the control machine: open this console"
                                         " there with `podium console STACK`, or run"
                                         " `podium rollback STACK --to N`")
        form = request.state.form
        problem = console_releases.confirmation_problem(form.get("to"), form.get("confirm"))
        if problem:
            return JSONResponse({"error": {"message": problem}}, 400)
        return JSONResponse({"to": int(form["to"])})

    async def audit(self, request: Request, session: ConsoleSession | None) -> Response:
        entries = (await call_admin(request, admin.audit_log, self.gw))["data"]
        chain = await call_admin(request, admin.audit_verify, self.gw)
        data = {"entries": list(reversed(entries)), "chain": chain}
        return self.twin(request, session, "audit.html", data)

    def routes(self) -> list[BaseRoute]:
        Handler = Callable[[Request, ConsoleSession | None], Awaitable[Response]]

        def read(path: str, page: Handler, twin: bool = True) -> list[Route]:
            endpoint = reading(self.gw, self.books, page)
            found = [Route(f"/{path}", endpoint, methods=["GET"])]
            if twin:
                found.append(Route(f"/api/{path or 'overview'}", endpoint, methods=["GET"]))
            return found

        def change(path: str, page: Handler) -> Route:
            return Route(f"/{path}", changing(self.books, page), methods=["POST"])

        return [
            Route("/login", self.login_form, methods=["GET"]),
            Route("/login", self.login, methods=["POST"]),
            Route(CSS_URL.removeprefix(PREFIX), self.css, methods=["GET"]),
            Route("/favicon.svg", self.icon, methods=["GET"]),
            change("logout", self.logout),
            *read("", self.overview), *read("models", self.models), *read("keys", self.keys),
            change("keys", self.create_key), change("keys/{name}/revoke", self.revoke_key),
            change("keys/{name}/rotate", self.rotate_key), change("keys/change", self.update_key),
            *read("usage", self.usage), *read("usage.csv", self.usage_csv, twin=False),
            *read("releases", self.releases), change("releases/rollback", self.rollback_check),
            *read("audit", self.audit),
        ]


def _settings(form: dict[str, str], *, clearing: bool) -> dict[str, Any]:
    """A key's settings as filled in a form; with `clearing`, '-' clears one (sent as null)."""
    found: dict[str, Any] = {}
    for field in SETTINGS:
        value = form.get(field, "").strip()
        if clearing and value == "-":
            found[field] = None
        elif value:
            found[field] = parse_expiry(value) if field == "expires_at" else value
    return found


def console_routes(gw: Gateway) -> list[BaseRoute]:
    """The console mounted at /console, or nothing when the gateway config has no `console:`."""
    console = gw.config.console
    if console is None:
        return []
    pages = ConsolePages(gw, console)

    async def failed(request: Request, exc: Exception) -> Response:
        # The store away, or an admin handler's refusal the page did not expect: one sentence.
        assert isinstance(exc, errors.GatewayError)
        return Response(exc.message + "\n", exc.status, media_type="text/plain")

    app = Starlette(routes=pages.routes(),
                    exception_handlers={**errors.ROUTE_ERRORS, errors.GatewayError: failed})
    return [Mount(PREFIX, app=SourceGuard(app, console))]
