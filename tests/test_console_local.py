"""`podium console` on the control machine: the real gateway's console passed through unchanged,
its rollback form shown only there, and the rollback run only for a session the gateway accepts,
its CSRF token and the exact typed confirmation (the rollback here is one the test observes:
a real one needs nodes, and runs in tests/test_lab_releases.py)."""

from __future__ import annotations

import asyncio
import json
import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from aiohttp import web
from rich.console import Console

from podium.errors import InvalidInput
from podium.releases.console import LocalConsole
from podium.services.gateway.console_guard import CSP
from podium.services.gateway.console_releases import LOCAL_CONSOLE
from tests.fixtures_console import ConsoleClient
from tests.fixtures_gateway import GatewayFactory, GatewayProcess, free_port
from tests.test_console_pages import release

# No engine answers here: the console's pages and its rollback never reach one.
MODELS = {"tiny": {"kind": "llm", "replicas": ["http://127.0.0.1:9"]}}
STACK = "stacks/consoled"


@dataclass
class ObservedRollback:
    """Stands in for podium.releases.rollback.rollback, with its signature: records each call."""

    calls: list[tuple[str, int | None]] = field(default_factory=list)
    fails: str = ""

    def __call__(self, stack_arg: str, to: int | None, *, console: Console) -> Any:
        self.calls.append((stack_arg, to))
        console.print(f"rolling {stack_arg} back to release {to}")
        if self.fails:
            raise InvalidInput(self.fails)
        return SimpleNamespace(changes=2, release=3)


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    folder = tmp_path_factory.mktemp("node-releases")
    for r in (release(1, "0.1.0+aaaaaaaaaaaa", "sha256:" + "1" * 64),
              release(2, "0.1.0+bbbbbbbbbbbb", "sha256:" + "2" * 64)):
        (folder / f"{r.number:04d}.json").write_text(json.dumps(r.for_host("gw1")))
    factory = GatewayFactory(tmp_path_factory.mktemp("console-local"))
    try:
        yield factory.start(models=MODELS, console={"sources": ["127.0.0.1/32"],
                                                    "releases_dir": str(folder)})
    finally:
        factory.stop_all()


@pytest.fixture
def rollback() -> ObservedRollback:
    return ObservedRollback()


@pytest.fixture
def local(gw: GatewayProcess, rollback: ObservedRollback) -> Iterator[int]:
    """The local console (as `podium console` serves it) in front of `gw`, on 127.0.0.1; its port."""
    port, loop, ready = free_port(), asyncio.new_event_loop(), threading.Event()
    runner = web.AppRunner(LocalConsole(STACK, gw.url, None, rollback).app())

    def serve() -> None:
        asyncio.set_event_loop(loop)
        loop.run_until_complete(runner.setup())
        loop.run_until_complete(web.TCPSite(runner, "127.0.0.1", port).start())
        ready.set()
        loop.run_forever()
        loop.run_until_complete(runner.cleanup())
        loop.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    assert ready.wait(10), "the local console did not start"
    try:
        yield port
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)


def operator(port: int, token: str) -> ConsoleClient:
    client = ConsoleClient(port)
    answer = client.login(token)
    assert answer.status == 303 and client.cookie, answer
    return client


def roll_back(client: ConsoleClient, to: str, confirm: str, csrf: str | None = None) -> Any:
    return client.call("POST", "/console/releases/rollback",
                       {"csrf": csrf if csrf is not None else client.csrf("/console/releases"),
                        "to": to, "confirm": confirm})


def test_login_cookie_and_csp_are_the_gateways_passed_through(gw: GatewayProcess, local: int) -> None:
    client = ConsoleClient(local)
    answer = client.login(gw.admin_token)
    assert (answer.status, answer.headers["location"]) == (303, "/console/")
    cookie = answer.headers["set-cookie"]
    assert "HttpOnly" in cookie and "Secure" in cookie and "Path=/console" in cookie, cookie
    page = client.call("GET", "/console/keys")
    assert page.status == 200 and "API keys" in page.body
    assert page.headers["content-security-policy"] == CSP
    # The session is the gateway's own: the cookie taken through the local console works there.
    assert ConsoleClient(gw.port, cookie=client.cookie).call("GET", "/console/keys").status == 200
    assert ConsoleClient(local).call("GET", "/console/keys").headers["location"] == "/console/login"


def test_the_rollback_form_shows_only_through_the_local_console(gw: GatewayProcess, local: int) -> None:
    direct = operator(gw.port, gw.admin_token).call("GET", "/console/releases")
    assert direct.status == 200 and "podium rollback STACK --to 1" in direct.body
    assert 'name="confirm"' not in direct.body
    through = operator(local, gw.admin_token)
    page = through.call("GET", "/console/releases")
    forms = re.findall(r'action="/console/releases/rollback".*?name="to" value="(\d+)"', page.body, re.S)
    assert forms == ["1", "2"], page.body
    assert 'name="confirm"' in page.body and "roll back to 2" in page.body
    assert "podium rollback STACK --to" not in page.body
    assert json.loads(through.call("GET", "/console/api/releases").body)["local"] is True
    # A browser's own copy of the local console's header is not passed on as its own.
    sent = through.call("GET", "/console/api/releases", headers={LOCAL_CONSOLE: "0"})
    assert json.loads(sent.body)["local"] is True


def test_a_rollback_without_a_session_is_refused_and_nothing_runs(
        gw: GatewayProcess, local: int, rollback: ObservedRollback) -> None:
    answer = roll_back(ConsoleClient(local), "1", "roll back to 1", csrf="anything")
    assert answer.status == 401 and "log in first" in answer.body
    forged = roll_back(ConsoleClient(local, cookie="made-up"), "1", "roll back to 1", csrf="x")
    assert forged.status == 401
    assert rollback.calls == []


def test_a_forged_csrf_token_or_another_sites_page_is_refused_and_nothing_runs(
        gw: GatewayProcess, local: int, rollback: ObservedRollback) -> None:
    client = operator(local, gw.admin_token)
    answer = roll_back(client, "1", "roll back to 1", csrf="forged-" + "x" * 20)
    assert answer.status == 403 and "CSRF token does not match" in answer.body
    elsewhere = ConsoleClient(local, cookie=client.cookie, origin="http://127.0.0.1:1")
    assert roll_back(elsewhere, "1", "roll back to 1", csrf=client.csrf("/console/releases")).status == 403
    assert rollback.calls == []


@pytest.mark.parametrize("to, typed", [("1", "roll back to 2"), ("1", "Roll back to 1"),
                                       ("1", " roll back to 1"), ("1", ""), ("2", "1"),
                                       ("x", "roll back to x"), ("0", "0")])
def test_a_confirmation_not_typed_exactly_is_refused_in_one_sentence_and_nothing_runs(
        gw: GatewayProcess, local: int, rollback: ObservedRollback, to: str, typed: str) -> None:
    answer = roll_back(operator(local, gw.admin_token), to, typed)
    assert answer.status == 400, answer
    message = json.loads(answer.body)["error"]["message"]
    assert message.count(". ") == 0 and ("nothing was run" in message or "not a release number" in message)
    assert rollback.calls == []


def test_the_gateway_itself_never_rolls_back(gw: GatewayProcess) -> None:
    client = operator(gw.port, gw.admin_token)
    answer = roll_back(client, "1", "roll back to 1")
    assert answer.status == 403 and "podium console STACK" in answer.body
    # A forged header gets the gateway's yes, and that is all: no gateway can run a rollback.
    forged = client.call("POST", "/console/releases/rollback",
                         {"csrf": client.csrf("/console/releases"), "to": "1", "confirm": "1"},
                         headers={LOCAL_CONSOLE: "1"})
    assert (forged.status, json.loads(forged.body)) == (200, {"to": 1})


@pytest.mark.parametrize("typed", ["roll back to 1", "1"])
def test_the_exact_confirmation_runs_the_rollback_once_and_shows_its_outcome(
        gw: GatewayProcess, local: int, rollback: ObservedRollback, typed: str) -> None:
    answer = roll_back(operator(local, gw.admin_token), "1", typed)
    assert answer.status == 200, answer
    assert answer.headers["content-type"].startswith("text/plain")
    assert answer.headers["content-security-policy"] == CSP
    assert answer.body.splitlines() == [f"rolling {STACK} back to release 1", "changes: 2", "release: 3"]
    assert rollback.calls == [(STACK, 1)]


def test_a_rollback_that_fails_says_why_on_the_page(
        gw: GatewayProcess, local: int, rollback: ObservedRollback) -> None:
    rollback.fails = "release 1's snapshot is missing; restore it or roll back to another release"
    answer = roll_back(operator(local, gw.admin_token), "1", "roll back to 1")
    assert answer.body.splitlines()[-1] == f"error: {rollback.fails}"
    assert rollback.calls == [(STACK, 1)]


def test_a_gateway_that_does_not_answer_is_said_in_one_sentence() -> None:
    refused = LocalConsole(STACK, f"http://127.0.0.1:{free_port()}", None, ObservedRollback())

    async def ask() -> tuple[int, str]:
        from aiohttp.test_utils import TestClient, TestServer

        async with TestClient(TestServer(refused.app())) as client:
            answer = await client.get("/console/")
            return answer.status, await answer.text()

    status, text = asyncio.run(ask())
    assert status == 502 and text.startswith("the gateway at http://127.0.0.1:") and text.count("\n") == 1


def test_podium_console_refuses_a_port_it_cannot_listen_on_in_one_sentence(tmp_path: Path) -> None:
    import socket

    import typer
    import yaml

    from podium.cli import releases as releases_cli
    from podium.render import REPO
    from tests.fixtures_gateway import invoke

    data = yaml.safe_load((REPO / "tests/stacks/labrel/stack.yaml").read_text())
    data["gateway"] = {"nodes": ["ctrl"], "tls": False}
    (tmp_path / "stack.yaml").write_text(yaml.safe_dump(data))
    app = typer.Typer()
    releases_cli.register(app)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        done = invoke(app, "console", str(tmp_path), "--port", str(port))
    assert done.exit_code == 2, done
    assert done.error == (f"--port {port}: 127.0.0.1:{port} cannot be listened on (Address already"
                          " in use); give a free port")
    assert invoke(app, "console", str(tmp_path), "--port", "70000").exit_code == 2
