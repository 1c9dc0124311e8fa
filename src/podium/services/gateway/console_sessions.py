"""Operator console logins: server-side sessions, each with an expiry and its own CSRF token."""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass


@dataclass
class ConsoleSession:
    """One operator's login: the cookie holds `sid`; forms carry `csrf`."""

    sid: str
    csrf: str
    expires: float  # monotonic clock

    def csrf_matches(self, given: str | None) -> bool:
        return given is not None and hmac.compare_digest(given.encode(), self.csrf.encode())


class SessionBook:
    """Sessions of one gateway process, kept by the sha256 of their id (a memory dump or a
    debugger shows no cookie that works). A login lasts `lifetime_s` from its last use.

    Example: book = SessionBook(3600); s = book.open(); assert book.find(s.sid) is s
    """

    def __init__(self, lifetime_s: float, size: int = 1000) -> None:
        self.lifetime_s = lifetime_s
        self.size = size
        self._by_hash: dict[str, ConsoleSession] = {}

    @staticmethod
    def _hash(sid: str) -> str:
        return hashlib.sha256(sid.encode()).hexdigest()

    def open(self) -> ConsoleSession:
        now = time.monotonic()
        self._by_hash = {h: s for h, s in self._by_hash.items() if s.expires > now}
        while len(self._by_hash) >= self.size:  # the oldest login goes first
            del self._by_hash[min(self._by_hash, key=lambda h: self._by_hash[h].expires)]
        session = ConsoleSession(secrets.token_urlsafe(32), secrets.token_urlsafe(32),
                                 now + self.lifetime_s)
        self._by_hash[self._hash(session.sid)] = session
        return session

    def find(self, sid: str | None) -> ConsoleSession | None:
        if not sid:
            return None
        found = self._by_hash.get(self._hash(sid))
        now = time.monotonic()
        if found is None or found.expires <= now:
            return None
        found.expires = now + self.lifetime_s
        return found

    def close(self, sid: str | None) -> None:
        if sid:
            self._by_hash.pop(self._hash(sid), None)
