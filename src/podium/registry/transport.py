"""oras' registry client with Podium's credentials, TLS and failure messages plugged in."""

from __future__ import annotations

import base64
import re
import time
from pathlib import Path
from typing import Any
from urllib.parse import urljoin, urlsplit

import oras.provider
import requests

from podium.errors import InvalidInput, PodiumError

ADDRESS = re.compile(r"^(\[[0-9a-fA-F:]+\]|[A-Za-z0-9.-]+):\d{1,5}$")
# Connect quickly to a registry that is down; allow slow reads of large blobs on busy disks.
TIMEOUT = (10, 300)


def check_address(address: str) -> str:
    if not ADDRESS.match(address):
        raise InvalidInput(
            f"--registry {address!r} is not HOST:PORT; give e.g. --registry 127.0.0.1:5000 "
            "(add --insecure for a plain-HTTP registry, no http:// prefix)"
        )
    return address


class Transport(oras.provider.Registry):  # type: ignore[misc]  # oras ships no type hints
    """Every HTTP request oras (and Podium) makes to one registry goes through do_request.

    oras' own do_request retries any failure five times with sleeps of up to 83 seconds and
    answers a 401 by sending the request again with credentials; here credentials go with
    every request (htpasswd registries want Basic auth, and resending a 64 MiB upload chunk
    after a 401 doubles the traffic), idempotent requests retry briefly, and refusals turn
    into one sentence a user can act on.
    """

    def __init__(
        self,
        address: str,
        *,
        insecure: bool = False,
        ca: str | Path | None = None,
        user: str | None = None,
        password: str | None = None,
    ) -> None:
        super().__init__(
            hostname=check_address(address),
            insecure=insecure,
            tls_verify=str(ca) if ca else True,
            auth_backend="basic",
        )
        self.address = address
        self.base = f"{self.prefix}://{address}"
        self.user = user
        self._authorization: str | None = None
        if user is not None:
            token = base64.b64encode(f"{user}:{password or ''}".encode()).decode()
            self._authorization = f"Basic {token}"

    def do_request(
        self,
        url: str,
        method: str = "GET",
        data: Any = None,
        headers: dict[str, str] | None = None,
        json: Any = None,
        stream: bool = False,
    ) -> requests.Response:
        headers = dict(headers or {})
        if self._authorization:
            headers["Authorization"] = self._authorization
        # Only requests that change nothing are retried: a repeated PATCH could corrupt an upload.
        attempts = 3 if method in ("GET", "HEAD") else 1
        for attempt in range(attempts):
            try:
                response: requests.Response = self.session.request(
                    method,
                    url,
                    data=data,
                    json=json,
                    headers=headers,
                    stream=stream,
                    verify=self._tls_verify,
                    timeout=TIMEOUT,
                    hooks={"response": [self._refuse_downgrade]},
                )
                break
            except requests.exceptions.SSLError as exc:
                raise PodiumError(
                    f"TLS check of the registry at {self.address} failed ({_reason(exc)}); pass "
                    "--ca FILE with the CA that signed its certificate"
                ) from None
            except requests.ConnectionError as exc:
                if attempt + 1 < attempts:
                    time.sleep(0.5 * (attempt + 1))
                    continue
                raise PodiumError(
                    f"cannot reach the registry at {self.base} ({_reason(exc)}); check --registry "
                    "and that the registry is running"
                ) from None
        if response.status_code == 401:
            response.close()
            if self.user is None:
                raise InvalidInput(
                    f"the registry at {self.address} asks for credentials; set "
                    "PODIUM_REGISTRY_USER and PODIUM_REGISTRY_PASSWORD"
                )
            raise InvalidInput(
                f"the registry at {self.address} refused the credentials of user {self.user!r} "
                "(HTTP 401); set PODIUM_REGISTRY_USER and PODIUM_REGISTRY_PASSWORD to an account "
                "of its htpasswd file"
            )
        if response.status_code == 403:
            response.close()
            raise InvalidInput(
                f"user {self.user!r} may not {method} {url.removeprefix(self.base)} on the "
                f"registry at {self.address} (HTTP 403); use an account that may"
            )
        if response.status_code >= 500:
            response.close()
            raise PodiumError(
                f"the registry at {self.address} failed on {method} "
                f"{url.removeprefix(self.base)} (HTTP {response.status_code}); see its log"
            )
        return response

    def _refuse_downgrade(self, response: requests.Response, *args: Any, **kwargs: Any) -> None:
        """Stop a redirect from HTTPS to plain HTTP before it is followed.

        Redirects to another host are followed (registries that keep blobs in an object store
        send blob GETs to a pre-signed URL there), and requests drops the Authorization header
        when the scheme, host or port changes, since the URL's signature is the credential
        there; what it would still do is follow HTTPS down to plain HTTP.
        """
        if not (response.is_redirect and response.url.startswith("https://")):
            return
        target = urljoin(response.url, response.headers.get("Location", ""))
        if not target.startswith("https://"):
            response.close()
            raise PodiumError(
                f"the registry at {self.address} redirected {urlsplit(response.url).path} to "
                f"{urlsplit(target).scheme}://{urlsplit(target).netloc}, away from HTTPS; "
                "refusing it - serve blobs over HTTPS"
            )

    def v2(self, path: str) -> str:
        """The URL of a registry API path under /v2/."""
        return f"{self.base}/v2/{path}"


def _reason(exc: BaseException) -> str:
    """The innermost cause of a requests error, which is the part that says what happened."""
    while exc.__context__ is not None and exc.__context__ is not exc:
        exc = exc.__context__
    return str(exc).split(": ", 1)[-1][:200] or exc.__class__.__name__


def raise_for(response: requests.Response, what: str) -> None:
    """A registry error other than auth or 5xx (handled above), as one sentence."""
    if response.status_code in (200, 201, 202, 204, 206):
        return
    try:
        errors = response.json().get("errors") or []
        detail = "; ".join(f"{e.get('code')}: {e.get('message')}" for e in errors)
    except ValueError:
        detail = response.text[:200]
    raise PodiumError(f"{what} failed: HTTP {response.status_code} {detail}".rstrip())
