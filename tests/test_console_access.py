"""The console lets in logged-in operators from the admin sources only: sessions, CSRF, CSP."""

from __future__ import annotations

import html
import json
import re
import time
from collections.abc import Iterator

import pytest

from podium.services.gateway.console_guard import CSP
from podium.services.gateway.console_sessions import SessionBook
from tests.fixtures_console import ConsoleClient
from tests.fixtures_gateway import GatewayFactory, GatewayProcess

# No engine answers here: access is decided before any request reaches one.
MODELS = {"tiny": {"kind": "llm", "replicas": ["http://127.0.0.1:9"]}}


@pytest.fixture(scope="module")
def factory(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayFactory]:
    found = GatewayFactory(tmp_path_factory.mktemp("console-access"))
    try:
        yield found
    finally:
        found.stop_all()


@pytest.fixture(scope="module")
def gw(factory: GatewayFactory) -> GatewayProcess:
    return factory.start(models=MODELS, console={"sources": ["127.0.0.1/32"]})


def logged_in(gw: GatewayProcess) -> ConsoleClient:
    client = ConsoleClient(gw.port)
    answer = client.login(gw.admin_token)
    assert answer.status == 303 and client.cookie, answer
    return client


def key_names(gw: GatewayProcess) -> set[str]:
    return {k["name"] for k in gw.admin.list_keys()}


def test_without_a_session_pages_send_to_the_login_and_twins_and_changes_answer_401(
        gw: GatewayProcess) -> None:
    anonymous = ConsoleClient(gw.port)
    for page in ("/console/", "/console/keys", "/console/usage", "/console/audit"):
        answer = anonymous.call("GET", page)
        assert (answer.status, answer.headers.get("location")) == (303, "/console/login"), page
    for twin in ("/console/api/keys", "/console/api/usage", "/console/api/overview"):
        assert anonymous.call("GET", twin).status == 401, twin
    assert anonymous.call("GET", "/console/api/keys",
                          headers={"Authorization": "Bearer pdm-admin-wrong"}).status == 401
    refused = anonymous.call("POST", "/console/keys", {"name": "sneaky", "csrf": "x"})
    assert refused.status == 401
    # A stolen-looking cookie is no session either.
    assert ConsoleClient(gw.port, cookie="made-up").call("GET", "/console/keys").status == 303
    assert "sneaky" not in key_names(gw)


def test_login_with_the_admin_token_sets_a_strict_session_cookie(gw: GatewayProcess) -> None:
    wrong = ConsoleClient(gw.port).login("pdm-admin-not-it")
    assert wrong.status == 401 and wrong.cookie() is None
    assert "pdm-admin-not-it" not in wrong.body  # what was typed is not echoed
    client = ConsoleClient(gw.port)
    answer = client.login(gw.admin_token)
    assert (answer.status, answer.headers["location"]) == (303, "/console/")
    attributes = {a.strip().split("=")[0].lower(): a.strip()
                  for a in answer.headers["set-cookie"].split(";")}
    assert {"httponly", "secure", "samesite", "path"} <= set(attributes), attributes
    assert attributes["samesite"].lower() == "samesite=strict"
    assert attributes["path"] == "Path=/console"
    page = client.call("GET", "/console/keys")
    assert page.status == 200 and "API keys" in page.body
    assert page.headers["content-security-policy"] == CSP
    assert CSP.startswith("default-src 'self';") and "script-src 'none'" in CSP
    assert page.headers["cache-control"] == "no-store"
    assert "<script" not in page.body and "style=" not in page.body
    # The stylesheet's URL names its content, so it alone may be kept.
    css = client.call("GET", re.search(r'href="(/console/console\.[0-9a-f]+\.css)"', page.body)[1])
    assert css.status == 200 and css.headers["content-type"].startswith("text/css")
    assert css.headers["cache-control"] == "public, max-age=31536000, immutable"
    assert css.headers["content-security-policy"] == CSP
    # The token is in no log line, whether it was right or wrong.
    assert gw.admin_token not in gw.log() and "pdm-admin-not-it" not in gw.log()


def test_a_json_twin_answers_the_admin_token_as_the_cli_sends_it(gw: GatewayProcess) -> None:
    answer = ConsoleClient(gw.port).call("GET", "/console/api/keys",
                                         headers={"Authorization": f"Bearer {gw.admin_token}"})
    assert answer.status == 200, answer
    assert set(json.loads(answer.body)) == {"keys", "teams"}


def test_a_change_needs_the_sessions_csrf_token_and_this_sites_origin(gw: GatewayProcess) -> None:
    client = logged_in(gw)
    csrf = client.csrf()
    forged = client.call("POST", "/console/keys", {"name": "forged", "csrf": "A" * 43})
    assert forged.status == 403 and "CSRF" in forged.body
    missing = client.call("POST", "/console/keys", {"name": "forged"})
    assert missing.status == 403
    other = logged_in(gw)  # another session's token is no token for this one
    assert other.call("POST", "/console/keys", {"name": "forged", "csrf": csrf}).status == 403
    elsewhere = client.call("POST", "/console/keys", {"name": "forged", "csrf": csrf},
                            headers={"Origin": "https://evil.example"})
    assert elsewhere.status == 403
    assert "forged" not in key_names(gw)
    made = client.call("POST", "/console/keys", {"name": "through-console", "csrf": csrf,
                                                 "models": "tiny", "rpm": "30"})
    assert made.status == 201, made.body[-500:]
    assert "through-console" in key_names(gw)
    # Made by the admin API's own handler: audited like the CLI's, the console named as actor.
    entry = [e for e in gw.admin.audit() if e["target"] == "through-console"][-1]
    assert (entry["action"], entry["actor"]) == ("key.create", "admin-token (console)")


def test_bad_input_is_one_sentence_naming_the_field_and_nothing_is_stored(
        gw: GatewayProcess) -> None:
    client = logged_in(gw)
    csrf = client.csrf()
    before = key_names(gw)
    answer = client.call("POST", "/console/keys", {"name": "bad-quota", "quota": "lots",
                                                   "csrf": csrf})
    assert answer.status == 400
    assert "quota 'lots' is not understood; write it as N/day or N/month" in html.unescape(
        answer.body)
    assert key_names(gw) == before


def test_logout_ends_the_session(gw: GatewayProcess) -> None:
    client = logged_in(gw)
    csrf = client.csrf()
    assert client.call("POST", "/console/logout", {"csrf": csrf}).status == 303
    assert client.call("GET", "/console/keys").status == 303


def test_outside_the_admin_sources_the_console_refuses_before_any_login(
        factory: GatewayFactory) -> None:
    # Only 127.0.0.2 is an admin source: 127.0.0.1 is outside, though it is this machine.
    gw = factory.start(models=MODELS, console={"sources": ["127.0.0.2/32"]})
    outside = ConsoleClient(gw.port)
    for method, path, form in (("GET", "/console/login", None), ("GET", "/console/", None),
                               ("POST", "/console/login", {"token": gw.admin_token})):
        answer = outside.call(method, path, form)
        assert answer.status == 403, (path, answer)
        assert answer.body == "the console answers the admin sources only\n"
        assert answer.cookie() is None
    assert outside.call("GET", "/console/api/keys",
                        headers={"Authorization": f"Bearer {gw.admin_token}"}).status == 403
    inside = ConsoleClient(gw.port, source="127.0.0.2")
    assert inside.call("GET", "/console/login").status == 200
    assert inside.login(gw.admin_token).status == 303
    assert inside.call("GET", "/console/keys").status == 200


def test_verify_asks_the_console_from_a_node_outside_its_sources_and_from_this_machine(
        factory: GatewayFactory, gw: GatewayProcess) -> None:
    """`podium verify`'s console checks, run against real gateways: curl on a node outside the
    sources gets the refusal, and this machine, an admin source, gets the login form."""
    import testinfra
    from roles.gateway import verify

    closed = factory.start(models=MODELS, console={"sources": ["127.0.0.2/32"]})
    status, body = verify.console_answer_on(testinfra.get_host("local://"),
                                            f"http://127.0.0.1:{closed.port}/console/login")
    assert (status, body.strip()) == (403, verify.CONSOLE_REFUSED)
    source, status, body = verify.console_answer_here(f"http://127.0.0.1:{closed.port}/console/login")
    assert (source, status) == ("127.0.0.1", 403)
    source, status, body = verify.console_answer_here(f"http://127.0.0.1:{gw.port}/console/login")
    assert (source, status) == ("127.0.0.1", 200) and 'name="token"' in body


def test_verify_refuses_from_the_gateway_node_else_from_another_node_that_is_no_admin_source() -> None:
    from roles.gateway.verify import outside_console_sources

    from podium.plan.components import BY_NAME
    from podium.render import REPO
    from podium.stack import load_stack

    stack = load_stack(REPO / "stacks" / "lab")
    # What verify reads: the gateway's settings hold the lab host as the console's one source.
    sources = BY_NAME["gateway"].settings(stack, "ctrl")["console_sources"]
    assert sources == ["10.77.0.1"]
    assert outside_console_sources(stack, sources, "ctrl") == "ctrl"
    assert outside_console_sources(stack, ["10.77.0.10/32"], "ctrl") == "node1"
    assert outside_console_sources(stack, ["10.77.0.0/24"], "ctrl") is None


def test_a_gateway_without_a_console_serves_none(factory: GatewayFactory) -> None:
    gw = factory.start(models=MODELS)
    assert ConsoleClient(gw.port).call("GET", "/console/login").status == 404


def test_a_session_expires_after_its_lifetime_unused() -> None:
    book = SessionBook(lifetime_s=0.2)
    session = book.open()
    assert book.find(session.sid) is session
    time.sleep(0.3)
    assert book.find(session.sid) is None
    assert book.find("") is None and book.find(None) is None
