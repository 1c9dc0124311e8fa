"""Calls to the Kubernetes API server through the `kubernetes` client: JSON or a pod's log, with
the server's own message, in one sentence, when it refuses."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import urllib3
from kubernetes.client import ApiClient
from kubernetes.client.exceptions import ApiException

from podium.errors import PodiumError

APPLY = "application/apply-patch+yaml"


def request(api: ApiClient, method: str, path: str, *, query: Sequence[tuple[str, str]] = (),
            body: Any = None, content_type: str = "application/json") -> dict[str, Any]:
    """One call to the API server; its JSON answer, or PodiumError with the server's message."""
    data = _call(api, method, path, query, body, content_type, "application/json")
    return json.loads(data) if data else {}


def request_text(api: ApiClient, path: str, *, query: Sequence[tuple[str, str]] = ()) -> str:
    """A GET answered in plain text (a pod's log)."""
    return _call(api, "GET", path, query, None, "application/json", "*/*").decode(errors="replace")


def _call(api: ApiClient, method: str, path: str, query: Sequence[tuple[str, str]], body: Any,
          content_type: str, accept: str) -> bytes:
    try:
        response = api.call_api(
            path, method, query_params=list(query),
            header_params={"Content-Type": content_type, "Accept": accept},
            body=body, auth_settings=["BearerToken"], _preload_content=False,
            _return_http_data_only=True,
        )
    except ApiException as exc:
        raise PodiumError(f"{method} {path}: {_reason(exc)}") from None
    except (OSError, urllib3.exceptions.HTTPError) as exc:
        # Refused, reset or timed out: urllib3 gives up after the client's retries.
        raise PodiumError(f"{method} {path}: cannot reach the API server ({exc})") from None
    data: bytes = response.data
    return data


def _reason(exc: ApiException) -> str:
    """The API server's own one-line message (a Status object) rather than the raw body."""
    try:
        status = json.loads(exc.body)
        return f"{status.get('message') or exc.reason} (HTTP {exc.status})"
    except (TypeError, ValueError):
        return f"{exc.reason} (HTTP {exc.status})"
