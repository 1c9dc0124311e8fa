"""Operator console logins: server-side sessions, each with an expiry and its own CSRF token."""

from __future__ import annotations

import hashlib
import hmac
import mmap
import multiprocessing
import secrets
import struct
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


class SharedSessionBook(SessionBook):
    """The sessions of every worker of one gateway (workers.py), in memory they all share:
    a login made through one worker is found by the next request, whichever worker takes it.

    Made before the workers fork: a table of `size` slots (the sha256 of the id, the CSRF
    token, the expiry) in an anonymous shared mapping, changed under a lock they share.
    """

    _SLOT = struct.Struct("32s64sd")

    def __init__(self, lifetime_s: float, size: int = 1000) -> None:
        super().__init__(lifetime_s, size)
        self._table = mmap.mmap(-1, self._SLOT.size * size)
        self._lock = multiprocessing.get_context("fork").Lock()

    def _slot(self, i: int) -> tuple[bytes, bytes, float]:
        return self._SLOT.unpack_from(self._table, i * self._SLOT.size)

    def _put(self, i: int, digest: bytes, csrf: bytes, expires: float) -> None:
        self._SLOT.pack_into(self._table, i * self._SLOT.size, digest, csrf, expires)

    def _find(self, digest: bytes, now: float) -> int | None:
        for i in range(self.size):
            found, _, expires = self._slot(i)
            if found == digest and expires > now:
                return i
        return None

    def open(self) -> ConsoleSession:
        now = time.monotonic()
        session = ConsoleSession(secrets.token_urlsafe(32), secrets.token_urlsafe(32),
                                 now + self.lifetime_s)
        with self._lock:
            # An empty or expired slot (expiry 0 or past), else the oldest login's.
            free = min(range(self.size), key=lambda i: self._slot(i)[2])
            self._put(free, hashlib.sha256(session.sid.encode()).digest(),
                      session.csrf.encode(), session.expires)
        return session

    def find(self, sid: str | None) -> ConsoleSession | None:
        if not sid:
            return None
        now = time.monotonic()
        digest = hashlib.sha256(sid.encode()).digest()
        with self._lock:
            i = self._find(digest, now)
            if i is None:
                return None
            _, csrf, _ = self._slot(i)
            self._put(i, digest, csrf, now + self.lifetime_s)
        return ConsoleSession(sid, csrf.rstrip(b"\0").decode(), now + self.lifetime_s)

    def close(self, sid: str | None) -> None:
        if not sid:
            return
        with self._lock:
            i = self._find(hashlib.sha256(sid.encode()).digest(), time.monotonic())
            if i is not None:
                self._put(i, b"", b"", 0.0)
