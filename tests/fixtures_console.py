"""Talking to a real gateway's console over HTTP: forms, its session cookie, a source address."""

from __future__ import annotations

import http.client
import re
import urllib.parse
from dataclasses import dataclass, field


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
