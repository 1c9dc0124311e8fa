"""The console in a real browser (Debian's headless Chromium over Selenium) against a real
gateway on TLS in front of llama-server: log in, make a key, call it with the openai client,
find the request in the usage chart, revoke the key; a screenshot of every page; each page's
weight and time to first render."""

from __future__ import annotations

import json
import shutil
import ssl
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from podium.registry.ca import CaScope, ca_certificate, server_certificate
from podium.services.gateway.console_chart import days_back
from tests.fixtures_console import (
    CHROMEDRIVER,
    PAGES,
    SCREENSHOTS,
    browser,
    check_figures,
    every_page,
    log_in,
    replaced,
    screenshot,
)
from tests.fixtures_engines import (
    EngineServer,
    engine_dir,
    llama_server,
    llama_server_bin,
    tiny_gguf,
)
from tests.fixtures_gateway import GatewayFactory, GatewayProcess, models_for

__all__ = ["browser", "engine_dir", "llama_server", "llama_server_bin", "tiny_gguf"]

pytestmark = pytest.mark.engines
STACK = "console-browser"


@dataclass
class TlsGateway:
    gw: GatewayProcess
    ca: Path

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.gw.port}"

    def openai(self, key: str) -> openai.OpenAI:
        context = ssl.create_default_context(cafile=str(self.ca))
        return openai.OpenAI(base_url=self.url + "/v1", api_key=key, max_retries=0,
                             http_client=httpx.Client(verify=context))


@pytest.fixture(scope="module")
def tls_gateway(llama_server: EngineServer, tmp_path_factory: pytest.TempPathFactory
                ) -> Iterator[TlsGateway]:
    root = tmp_path_factory.mktemp("console-browser")
    with pytest.MonkeyPatch.context() as env:
        env.setenv("PODIUM_STATE_DIR", str(root / "state"))
        ca = ca_certificate(STACK, CaScope(("gw",), ("127.0.0.1/32",)), replace=True)
        cert, key = server_certificate(STACK, "gateway", ["127.0.0.1"], ["gw"])
        factory = GatewayFactory(root)
        gw = factory.config(models=models_for(llama_server.url, llama_server.model),
                            tls={"cert": str(cert), "key": str(key)},
                            console={"sources": ["127.0.0.1/32"]})
        gw._log = gw.log_path.open("ab")
        gw.proc = subprocess.Popen([sys.executable, "-m", "podium.services.gateway", "--config",
                                    str(gw.config_path), "--log-level", "warning"],
                                   stdout=gw._log, stderr=subprocess.STDOUT)
        found = TlsGateway(gw, ca)
        try:
            _wait_tls(found)
            yield found
        finally:
            factory.stop_all()


def _wait_tls(found: TlsGateway) -> None:
    context = ssl.create_default_context(cafile=str(found.ca))
    deadline = time.monotonic() + 30
    while True:
        try:
            with urllib.request.urlopen(found.url + "/v2/health/live", context=context, timeout=2):
                return
        except OSError:
            assert found.gw.proc is not None and found.gw.proc.poll() is None, found.gw.log()
            assert time.monotonic() < deadline, found.gw.log()[-2000:]
            time.sleep(0.1)


def test_an_operator_makes_a_key_sees_it_used_and_revokes_it(browser: Any,
                                                               tls_gateway: TlsGateway) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    base = tls_gateway.url + "/console/"
    log_in(browser, base, tls_gateway.gw.admin_token, shot="login")
    cookie = browser.get_cookie("podium_console")
    assert cookie is not None and cookie["secure"] and cookie["httpOnly"]
    assert cookie["sameSite"] == "Strict"
    assert browser.execute_script("return document.cookie") == ""  # out of any script's reach

    browser.get(base + "keys")
    browser.find_element(By.ID, "name").send_keys("browser-key")
    models = browser.find_element(By.NAME, "models")
    models.clear()
    models.send_keys("tiny")
    create = browser.find_element(By.ID, "create")
    create.click()
    WebDriverWait(browser, 10).until(replaced(create))
    secret = browser.find_element(By.ID, "secret").text
    assert secret.startswith("pdm-")
    screenshot(browser, "key-created")

    client = tls_gateway.openai(secret)
    answer = client.chat.completions.create(
        model="tiny", messages=[{"role": "user", "content": "Hello"}], max_tokens=4)
    assert answer.usage is not None and answer.usage.completion_tokens > 0

    browser.get(base + PAGES["usage"])
    bar = browser.find_element(By.CSS_SELECTOR, f'rect.bar[data-label="{days_back(1)[0]}"]')
    assert int(bar.get_attribute("data-value")) >= 1
    row = browser.find_element(By.XPATH, "//table[@id='usage']//tr[td[1]='browser-key']")
    assert row.find_elements(By.TAG_NAME, "td")[1].text == "1"

    figures = every_page(browser, base)
    browser.set_window_size(390, 844)  # a phone
    for name in ("overview", "keys", "usage"):
        browser.get(base + PAGES[name])
        screenshot(browser, f"{name}-phone")
        # Wide tables scroll inside their box; the page itself never scrolls sideways.
        assert browser.execute_script(
            "return document.documentElement.scrollWidth <= window.innerWidth"), name
    browser.set_window_size(1280, 800)

    browser.get(base + "keys")
    revoke = browser.find_element(By.ID, "revoke-browser-key")
    revoke.click()
    WebDriverWait(browser, 10).until(replaced(revoke))
    state = browser.find_element(By.XPATH, "//tr[@data-key='browser-key']/td[2]").text
    assert state == "revoked"
    deadline = time.monotonic() + 3  # the gateway trusts a key lookup for key_cache_s (1 s)
    while True:
        try:
            client.chat.completions.create(
                model="tiny", messages=[{"role": "user", "content": "Hello"}], max_tokens=1)
        except openai.AuthenticationError:
            break
        assert time.monotonic() < deadline, "the revoked key still serves"
        time.sleep(0.2)

    # Nothing the console sends breaks its own CSP (Chromium logs each refusal as SEVERE).
    severe = [e["message"] for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    assert severe == [], severe
    (SCREENSHOTS / "figures.json").write_text(json.dumps(figures, indent=2))
    print(json.dumps(figures, indent=2))
    check_figures(figures)


def test_chromium_is_debians(browser: Any) -> None:
    version = browser.capabilities["browserVersion"]
    packaged = subprocess.run(["dpkg-query", "-W", "-f=${Version}", "chromium"],
                              capture_output=True, text=True)
    assert packaged.stdout.startswith(version), (version, packaged.stdout)
    assert shutil.which("chromedriver") == CHROMEDRIVER
