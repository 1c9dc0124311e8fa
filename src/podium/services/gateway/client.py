"""Key administration from outside the gateway: over its admin API, or directly on its store.

Both backends answer the same three calls with the same JSON-ready dicts, so the CLI
(and whatever resolves a stack to a gateway URL and admin token) need not care which.
"""

from __future__ import annotations

import getpass
import json
import ssl
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any, Protocol

from podium.errors import InvalidInput, PodiumError
from podium.services.gateway import audit
from podium.services.gateway.budgets import spend_op
from podium.services.gateway.keys import (
    DEFAULT_GRACE_S,
    KeySpec,
    create_op,
    list_op,
    new_secret,
    revoke_op,
    rotate_op,
    show_op,
    update_op,
)
from podium.services.gateway.store import Store
from podium.services.gateway.usage import UsageLine, report_op


class KeyAdmin(Protocol):
    def create_key(self, spec: KeySpec) -> dict[str, Any]: ...
    def list_keys(self) -> list[dict[str, Any]]: ...
    def revoke_key(self, name: str) -> dict[str, Any]: ...
    def show_key(self, name: str) -> dict[str, Any]: ...
    def update_key(self, name: str, changes: dict[str, Any]) -> dict[str, Any]: ...
    def rotate_key(self, name: str, grace_s: float = DEFAULT_GRACE_S) -> dict[str, Any]: ...
    def audit(self, since: float | None = None) -> list[dict[str, Any]]: ...
    def audit_verify(self) -> dict[str, Any]: ...
    def usage(self, since: float | None, until: float | None, by: list[str]) -> list[UsageLine]: ...


def os_user() -> str:
    """The person at the control machine, as the audit log names them."""
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


def _spec_json(spec: KeySpec) -> dict[str, Any]:
    return {**vars(spec), "models": list(spec.models)}


def read_token_file(path: Path) -> str:
    try:
        token = path.read_text().strip()
    except OSError as exc:
        raise InvalidInput(
            f"--admin-token-file {str(path)!r} cannot be read ({exc.strerror})"
        ) from None
    if not token:
        raise InvalidInput(f"--admin-token-file {str(path)!r} is empty")
    return token


class AdminApi:
    """The gateway's admin API at `gateway_url`, authorised by `admin_token`.

    Example: AdminApi("http://127.0.0.1:8080", token).create_key(KeySpec(name="ci"))["key"]
    """

    def __init__(
        self, gateway_url: str, admin_token: str, timeout: float = 30.0, ca_file: Path | None = None
    ) -> None:
        self.base = gateway_url.rstrip("/")
        self.token = admin_token
        self.timeout = timeout
        # A gateway with the stack's own CA is checked against that CA, never left unverified.
        self.context = ssl.create_default_context(cafile=str(ca_file)) if ca_file else None

    def _call(self, method: str, path: str, body: Any = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(
            self.base + path,
            data=data,
            method=method,
            headers={"Authorization": f"Bearer {self.token}", "Content-Type": "application/json",
                     "X-Podium-Actor": os_user()},
        )
        try:
            with urllib.request.urlopen(request, timeout=self.timeout, context=self.context) as resp:
                return json.loads(resp.read())
        except urllib.error.HTTPError as exc:
            try:
                message = json.loads(exc.read())["error"]["message"]
            except (ValueError, KeyError, TypeError):
                message = f"HTTP {exc.code}"
            if exc.code in (400, 404, 409):
                raise InvalidInput(message) from None
            raise PodiumError(f"gateway {self.base} refused {method} {path}: {message}") from None
        except (urllib.error.URLError, OSError) as exc:
            raise PodiumError(
                f"gateway {self.base} cannot be reached ({exc}); check --gateway"
            ) from None

    def create_key(self, spec: KeySpec) -> dict[str, Any]:
        result: dict[str, Any] = self._call("POST", "/admin/v1/keys", _spec_json(spec))
        return result

    def _key_path(self, name: str) -> str:
        return "/admin/v1/keys/" + urllib.parse.quote(name, safe="")

    def show_key(self, name: str) -> dict[str, Any]:
        result: dict[str, Any] = self._call("GET", self._key_path(name))
        return result

    def update_key(self, name: str, changes: dict[str, Any]) -> dict[str, Any]:
        result: dict[str, Any] = self._call("PATCH", self._key_path(name), changes)
        return result

    def rotate_key(self, name: str, grace_s: float = DEFAULT_GRACE_S) -> dict[str, Any]:
        result: dict[str, Any] = self._call("POST", self._key_path(name) + "/rotate",
                                            {"grace_s": grace_s})
        return result

    def audit(self, since: float | None = None) -> list[dict[str, Any]]:
        query = "" if since is None else "?" + urllib.parse.urlencode({"since": str(since)})
        data: list[dict[str, Any]] = self._call("GET", "/admin/v1/audit" + query)["data"]
        return data

    def audit_verify(self) -> dict[str, Any]:
        result: dict[str, Any] = self._call("GET", "/admin/v1/audit/verify")
        return result

    def teams(self) -> list[dict[str, Any]]:
        data: list[dict[str, Any]] = self._call("GET", "/admin/v1/teams")["data"]
        return data

    def put_team(self, name: str, settings: dict[str, Any]) -> dict[str, Any]:
        result: dict[str, Any] = self._call(
            "PUT", "/admin/v1/teams/" + urllib.parse.quote(name, safe=""), settings)
        return result

    def remove_team(self, name: str) -> dict[str, Any]:
        result: dict[str, Any] = self._call(
            "DELETE", "/admin/v1/teams/" + urllib.parse.quote(name, safe=""))
        return result

    def budgets(self) -> list[dict[str, Any]]:
        """Each budget of a key or team, with its spend in the current window."""
        data: list[dict[str, Any]] = self._call("GET", "/admin/v1/budgets")["data"]
        return data

    def report(self, action: str, target: str, detail: dict[str, Any]) -> dict[str, Any]:
        """Append one of the control machine's own actions (podium up, ...) to the audit log."""
        result: dict[str, Any] = self._call(
            "POST", "/admin/v1/audit", {"action": action, "target": target, "detail": detail})
        return result

    def list_keys(self) -> list[dict[str, Any]]:
        data: list[dict[str, Any]] = self._call("GET", "/admin/v1/keys")["data"]
        return data

    def revoke_key(self, name: str) -> dict[str, Any]:
        result: dict[str, Any] = self._call("DELETE", self._key_path(name))
        return result

    def usage(self, since: float | None, until: float | None, by: list[str]) -> list[UsageLine]:
        query = {"by": ",".join(by)}
        if since is not None:
            query["since"] = str(since)
        if until is not None:
            query["until"] = str(until)
        data = self._call("GET", "/admin/v1/usage?" + urllib.parse.urlencode(query))["data"]
        return [UsageLine(**row) for row in data]


class StoreAdmin:
    """Keys straight in the gateway's store (for a stopped gateway, or before its start)."""

    def __init__(self, store_url: str) -> None:
        self.store = Store(store_url)
        self.store.create_schema()
        self.actor = f"{os_user()} (on the store)"

    def _audited(self, op: Any, action: str, target: str,
                 detail: dict[str, Any] | None = None) -> Any:
        return self.store.run_sync(audit.audited(op, self.actor, action, target, detail))

    def create_key(self, spec: KeySpec) -> dict[str, Any]:
        secret = new_secret()
        detail = {k: v for k, v in _spec_json(spec).items() if k != "name" and v is not None}
        key = self._audited(create_op(spec, secret), "key.create", spec.name, detail)
        return {**key.to_json(), "key": secret}

    def list_keys(self) -> list[dict[str, Any]]:
        return [k.to_json() for k in self.store.run_sync(list_op())]

    def revoke_key(self, name: str) -> dict[str, Any]:
        return dict(self._audited(revoke_op(name), "key.revoke", name).to_json())

    def show_key(self, name: str) -> dict[str, Any]:
        return self.store.run_sync(show_op(name)).to_json()

    def update_key(self, name: str, changes: dict[str, Any]) -> dict[str, Any]:
        op = update_op(name, changes)
        return dict(self._audited(op, audit.update_action(changes), name, changes).to_json())

    def rotate_key(self, name: str, grace_s: float = DEFAULT_GRACE_S) -> dict[str, Any]:
        secret = new_secret()
        key = self._audited(rotate_op(name, secret, grace_s), "key.rotate", name,
                            {"grace_s": grace_s})
        return {**key.to_json(), "key": secret}

    def audit(self, since: float | None = None) -> list[dict[str, Any]]:
        return [e.to_json() for e in self.store.run_sync(audit.entries_op(since))]

    def audit_verify(self) -> dict[str, Any]:
        return self.store.run_sync(audit.verify_op()).to_json()

    def budgets(self) -> list[dict[str, Any]]:
        return [s.to_json() for s in self.store.run_sync(spend_op(time.time()))]

    def usage(self, since: float | None, until: float | None, by: list[str]) -> list[UsageLine]:
        return self.store.run_sync(report_op(since, until, by))


class ReplicaAdmin(AdminApi):
    """A gateway's control listener (`admin_listen`): drain and undrain engine replicas.

    Example: ReplicaAdmin("https://10.77.0.10:8445", token, ca_file=ca).drain(url, wait_s=60)
    """

    def replicas(self) -> list[dict[str, Any]]:
        data: list[dict[str, Any]] = self._call("GET", "/admin/v1/replicas")["data"]
        return data

    def drain(self, replica: str, wait_s: float = 0.0, hold_s: float = 1800.0) -> dict[str, Any]:
        """Drain `replica`; returns once its requests finished or `wait_s` passed (see in_flight)."""
        result: dict[str, Any] = self._call(
            "POST", "/admin/v1/replicas/drain", {"replica": replica, "wait_s": wait_s, "hold_s": hold_s})
        return result

    def undrain(self, replica: str) -> dict[str, Any]:
        result: dict[str, Any] = self._call("POST", "/admin/v1/replicas/undrain", {"replica": replica})
        return result
