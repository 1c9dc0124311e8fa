"""The console in a real browser (Debian's headless Chromium over Selenium) against a real
gateway on TLS in front of llama-server: log in, make a key, call it with the openai client,
find the request in the usage chart, revoke the key; a screenshot of every page; each page's
weight and time to first render."""

from __future__ import annotations

import json
import os
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
from podium.render import REPO
from podium.services.gateway.console_chart import days_back
from tests.fixtures_engines import (
    EngineServer,
    engine_dir,
    llama_server,
    llama_server_bin,
    tiny_gguf,
)
from tests.fixtures_gateway import GatewayFactory, GatewayProcess, models_for

__all__ = ["engine_dir", "llama_server", "llama_server_bin", "tiny_gguf"]

pytestmark = pytest.mark.engines
CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
SCREENSHOTS = REPO / "build" / "screenshots"
PAGES = {"overview": "", "models": "models", "keys": "keys", "usage": "usage?by=key&days=7",
         "releases": "releases", "audit": "audit"}
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


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not (os.path.exists(CHROMIUM) and os.path.exists(CHROMEDRIVER)):
        pytest.fail("headless Chromium is missing: apt-get install -y chromium chromium-driver")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1280,800", "--hide-scrollbars", "--no-first-run"):
        options.add_argument(arg)
    # The stack CA is the test's own; Chromium is told to take the gateway's certificate as is.
    options.accept_insecure_certs = True
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    os.environ["SE_OFFLINE"] = "true"  # Selenium Manager must never fetch a driver
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


def screenshot(driver: Any, name: str) -> Path:
    """Save the viewport as build/screenshots/NAME.png and check it shows something."""
    from PIL import Image

    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / f"{name}.png"
    assert driver.save_screenshot(str(path)), name
    with Image.open(path) as image:
        colours = image.convert("RGB").getcolors(maxcolors=1 << 16)
        width = image.width
    # A blank or unstyled page has a handful of colours; a rendered one has text's anti-aliasing.
    assert colours is None or len(colours) > 20, f"{name}: {len(colours or [])} colours"
    assert width == driver.execute_script("return window.innerWidth"), name
    return path


def page_figures(driver: Any) -> dict[str, Any]:
    """What the page weighed (document and every asset, as decoded) and when it first painted."""
    nav = driver.execute_script(
        "return performance.getEntriesByType('navigation')[0].toJSON()")
    assets = driver.execute_script(
        "return performance.getEntriesByType('resource').map(r => r.toJSON())")
    paints: dict[str, float] = {}
    deadline = time.monotonic() + 5  # the load event can come before the first paint
    while "first-contentful-paint" not in paints and time.monotonic() < deadline:
        paints = {p["name"]: p["startTime"] for p in driver.execute_script(
            "return performance.getEntriesByType('paint').map(p => p.toJSON())")}
        time.sleep(0.05)
    return {
        "bytes": nav["decodedBodySize"] + sum(a["decodedBodySize"] for a in assets),
        "transferred": nav["transferSize"] + sum(a["transferSize"] for a in assets),
        "assets": len(assets),
        "first_contentful_paint_ms": round(paints.get("first-contentful-paint", -1), 1),
        "response_end_ms": round(nav["responseEnd"], 1),
    }


def test_an_operator_makes_a_key_sees_it_used_and_revokes_it(browser: Any,
                                                               tls_gateway: TlsGateway) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as expected
    from selenium.webdriver.support.ui import WebDriverWait

    base = tls_gateway.url + "/console/"
    browser.get(base)
    assert browser.current_url == base + "login"
    screenshot(browser, "login")
    browser.find_element(By.ID, "token").send_keys(tls_gateway.gw.admin_token)
    browser.find_element(By.ID, "login").click()
    WebDriverWait(browser, 10).until(expected.url_to_be(base))
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
    WebDriverWait(browser, 10).until(expected.staleness_of(create))
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

    figures: dict[str, Any] = {}
    for name, path in PAGES.items():
        browser.get(base + path)
        figures[name] = page_figures(browser)
        screenshot(browser, name)
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
    WebDriverWait(browser, 10).until(expected.staleness_of(revoke))
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
    for name, f in figures.items():
        assert f["first_contentful_paint_ms"] > 0 and f["assets"] == 1, (name, f)
        assert f["bytes"] < 64 * 1024, (name, f)


def test_chromium_is_debians(browser: Any) -> None:
    version = browser.capabilities["browserVersion"]
    packaged = subprocess.run(["dpkg-query", "-W", "-f=${Version}", "chromium"],
                              capture_output=True, text=True)
    assert packaged.stdout.startswith(version), (version, packaged.stdout)
    assert shutil.which("chromedriver") == CHROMEDRIVER
