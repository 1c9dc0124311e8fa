"""Talking to a real gateway's console: over HTTP (forms, its session cookie, a source address)
and in Debian's headless Chromium (log in, each page's screenshot, weight and first paint)."""

from __future__ import annotations

import http.client
import os
import re
import time
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from podium.render import REPO

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
SCREENSHOTS = REPO / "build" / "screenshots"
PAGES = {"overview": "", "models": "models", "keys": "keys", "usage": "usage?by=key&days=7",
         "releases": "releases", "audit": "audit"}


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: str

    def cookie(self) -> str | None:
        found = re.match(r"podium_console=([^;]*)", self.headers.get("set-cookie", ""))
        return found.group(1) if found else None


@dataclass
class ConsoleClient:
    """One browser-less operator: the session cookie it was given, requests from `source`."""

    port: int
    source: str = "127.0.0.1"
    cookie: str | None = None
    origin: str | None = field(default=None)
    timeout: float = 30

    def call(self, method: str, path: str, form: dict[str, str] | None = None,
             headers: dict[str, str] | None = None) -> Answer:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=self.timeout,
                                          source_address=(self.source, 0))
        sent = {**(headers or {})}
        if self.cookie:
            sent["Cookie"] = f"podium_console={self.cookie}"
        body = None
        if form is not None:
            body = urllib.parse.urlencode(form)
            sent["Content-Type"] = "application/x-www-form-urlencoded"
            sent.setdefault("Origin", self.origin or f"http://127.0.0.1:{self.port}")
        try:
            conn.request(method, path, body=body, headers=sent)
            resp = conn.getresponse()
            return Answer(resp.status, {k.lower(): v for k, v in resp.getheaders()},
                          resp.read().decode())
        finally:
            conn.close()

    def login(self, token: str) -> Answer:
        answer = self.call("POST", "/console/login", {"token": token})
        self.cookie = answer.cookie() or self.cookie
        return answer

    def csrf(self, path: str = "/console/keys") -> str:
        page = self.call("GET", path)
        found = re.search(r'name="csrf" value="([^"]+)"', page.body)
        assert found, f"no CSRF token on {path}: {page.status} {page.body[:300]}"
        return found.group(1)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not (os.path.exists(CHROMIUM) and os.path.exists(CHROMEDRIVER)):
        pytest.fail("headless Chromium is missing: apt-get install -y chromium chromium-driver")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1280,800", "--hide-scrollbars", "--no-first-run",
                # Only the gateway under test is asked: no updates, sync or other calls home.
                "--disable-background-networking", "--disable-component-update", "--disable-sync"):
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


def log_in(driver: Any, base: str, token: str, shot: str | None = None) -> None:
    """Open the console at `base` (…/console/), which sends to its login page, and log in."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as expected
    from selenium.webdriver.support.ui import WebDriverWait

    driver.get(base)
    assert driver.current_url == base + "login"
    if shot:
        screenshot(driver, shot)
    driver.find_element(By.ID, "token").send_keys(token)
    driver.find_element(By.ID, "login").click()
    WebDriverWait(driver, 10).until(expected.url_to_be(base))


def replaced(element: Any) -> Any:
    """A wait condition: true once `element`'s page has been replaced (a form was submitted).

    Selenium's staleness_of expects StaleElementReferenceException, but Chromium may instead
    answer that the node "does not belong to the document" while the new page comes in; both
    mean the old page is gone.
    """
    from selenium.common.exceptions import StaleElementReferenceException, WebDriverException

    def gone(_driver: Any) -> bool:
        try:
            element.is_enabled()
        except StaleElementReferenceException:
            return True
        except WebDriverException as exc:
            if "does not belong to the document" not in str(exc):
                raise
            return True
        return False

    return gone


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


def every_page(driver: Any, base: str, prefix: str = "") -> dict[str, dict[str, Any]]:
    """Each console page at 1280x800: its figures, and its screenshot as PREFIX+NAME.png."""
    figures: dict[str, dict[str, Any]] = {}
    for name, path in PAGES.items():
        driver.get(base + path)
        figures[name] = page_figures(driver)
        screenshot(driver, prefix + name)
    return figures


def check_figures(figures: dict[str, dict[str, Any]]) -> None:
    """Every page painted, with its one stylesheet as its only asset, under 64 KiB in all."""
    for name, f in figures.items():
        assert f["first_contentful_paint_ms"] > 0 and f["assets"] == 1, (name, f)
        assert f["bytes"] < 64 * 1024, (name, f)
