"""Reaching a deployed gateway from the control machine: its URL, the stack CA, the admin token,
and the stack's declared API keys (kept as declared, secrets 0600 here, shown only on request)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from podium.errors import PodiumError
from podium.secrets import StackSecrets
from podium.services.gateway.client import AdminApi
from podium.services.gateway.declared import KeyChange
from podium.stack.model import Stack

if TYPE_CHECKING:
    from rich.console import Console

    from podium.releases.book import ReleaseBook

ADMIN_TOKEN = "gateway-admin"


def gateway_url(stack: Stack, node: str | None = None) -> str:
    gw = stack.gateway
    if gw is None:
        raise PodiumError(f"stack {stack.name} declares no gateway")
    # Clients use the gateways' one address where the stack declares it; `node` asks one gateway.
    address = gw.address if node is None and gw.address else stack.node(node or gw.nodes[0]).address
    return f"{'https' if gw.tls else 'http'}://{address}:{gw.port}"


def admin_api(stack: str, url: str) -> AdminApi:
    """The admin API at `url` with the stack's admin token; TLS is checked against the stack CA."""
    from podium.registry.ca import ca_certificate

    ca = ca_certificate(stack) if url.startswith("https") else None
    return AdminApi(url, StackSecrets(stack).token(ADMIN_TOKEN), ca_file=ca)


def stack_admin(stack: str | Stack) -> AdminApi:
    """The admin API of a stack's (first) gateway."""
    from podium.stack import load_stack

    loaded = load_stack(stack) if isinstance(stack, str) else stack
    return admin_api(loaded.name, gateway_url(loaded))


def ensure_declared_keys(stack: str, url: str, keys: list[dict[str, Any]]) -> list[str]:
    """Make the gateway's keys what the stack declares; the names of the keys changed."""
    return [c.name for c in reconcile_declared_keys(stack, url, keys) if c.kind == "key"]


def reconcile_declared_keys(stack: str, url: str, keys: list[dict[str, Any]],
                            teams: list[dict[str, Any]] | None = None) -> list[KeyChange]:
    """Create the declared keys the gateway lacks (secrets kept 0600 here), update those whose
    limits, models, team, budget or expiry changed in the stack, and revoke the keys the stack
    declared before and no longer does (their usage stays). Teams are put first and removed
    last, so no key is ever in a team the gateway lacks."""
    from podium.services.gateway.declared import declared_settings, team_changes
    from podium.services.gateway.keys import KeySpec

    api = admin_api(stack, url)
    declared_teams = {t["name"]: t for t in teams or []}
    team_moves = team_changes(declared_teams.values(), api.teams(), managed_teams(stack))
    changes = declared_key_changes(stack, url, keys, api)
    entries = {k["name"]: k for k in keys}
    for move in team_moves:
        if move.action != "remove":
            team = declared_teams[move.name]
            api.put_team(move.name, {f: team.get(f) for f in ("models", "rpm", "tpm", "budget")})
    for change in changes:
        if change.action == "create":
            settings = declared_settings(entries[change.name])
            spec = KeySpec.from_json({"name": change.name, **settings})
            _keep(stack, change.name, api.create_key(spec)["key"])
        elif change.action == "update":
            api.update_key(change.name, {f: new for f, (_, new) in change.fields.items()})
        else:
            api.revoke_key(change.name)
            key_file(stack, change.name).unlink(missing_ok=True)
    for move in team_moves:
        if move.action == "remove":
            api.remove_team(move.name)
    _keep_teams(stack, set(declared_teams))
    return [*team_moves, *changes]


def declared_key_changes(
    stack: str, url: str, keys: list[dict[str, Any]], api: AdminApi | None = None,
    teams: list[dict[str, Any]] | None = None,
) -> list[KeyChange]:
    """What the gateway at `url` must change to hold the stack's declared keys (and, when
    `teams` is given, its teams)."""
    from podium.services.gateway.declared import key_changes, team_changes

    api = api or admin_api(stack, url)
    moves = team_changes(teams, api.teams(), managed_teams(stack)) if teams is not None else []
    return [*moves, *key_changes(keys, api.list_keys(), managed_keys(stack))]


def planned_key_changes(previous: Path | None, keys: list[dict[str, Any]],
                        teams: list[dict[str, Any]] | None = None) -> list[KeyChange]:
    """Team and key changes from the stack file of the last release (`previous`; None: none
    yet) to the declared ones, for the plan: it reads no gateway, as it reads no host."""
    import yaml

    from podium.services.gateway.declared import as_listed, key_changes, team_changes

    before: dict[str, Any] = {}
    if previous is not None:
        document = yaml.safe_load(previous.read_text(encoding="utf-8")) or {}
        before = document.get("gateway") or {}
    old_keys = list(before.get("keys") or [])
    old_teams = list(before.get("teams") or [])
    return [*team_changes(teams or [], old_teams, {t["name"] for t in old_teams}),
            *key_changes(keys, as_listed(old_keys), {k["name"] for k in old_keys})]


def show_key_plan(console: Console, stack: Stack, book: ReleaseBook) -> None:
    """Print the team and key changes `podium up` would make, one line each."""
    if stack.gateway is None:
        return
    current = book.current()
    previous = book.snapshot(current.number)[0] if current is not None else None
    keys = [k.model_dump(mode="json") for k in stack.gateway.keys]
    teams = [t.model_dump(mode="json") for t in stack.gateway.teams]
    changes = planned_key_changes(previous, keys, teams)
    if changes:
        console.print("gateway teams and keys (against the last release's stack):")
    for change in changes:
        console.print(f"  {change.describe()}", markup=False)


def managed_keys(stack: str) -> set[str]:
    """Keys the stack declared (their secrets are kept here); only these does it ever revoke."""
    folder = StackSecrets(stack).path("keys")
    return {p.name for p in folder.iterdir()} if folder.is_dir() else set()


def managed_teams(stack: str) -> set[str]:
    """Teams the stack declared at its last reconcile; only these does it ever remove."""
    path = StackSecrets(stack).path("declared-teams")
    return set(path.read_text().split()) if path.is_file() else set()


def _keep_teams(stack: str, names: set[str]) -> None:
    path = StackSecrets(stack).path("declared-teams")
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    StackSecrets.write_private(path, "".join(f"{n}\n" for n in sorted(names)))


def keep_rotated(stack: str, name: str, secret: str) -> None:
    """A declared key's new secret replaces the kept one (keys made by hand are not kept)."""
    if key_file(stack, name).exists():
        _keep(stack, name, secret)


def report_action(stack: Stack, action: str, target: str, detail: dict[str, Any]) -> str | None:
    """Append one of the control machine's actions to the stack's audit log; why it could not
    be yet (no gateway, or none answering: then it waits here, 0600, and goes in first at the
    next report), else None."""
    import json
    import time

    if stack.gateway is None:
        return f"stack {stack.name} has no gateway to keep an audit log"
    waiting = StackSecrets(stack.name).path("audit-pending.jsonl")
    entries = waiting.read_text().splitlines() if waiting.is_file() else []
    entries.append(json.dumps({"action": action, "target": target,
                               "detail": {**detail, "done_at": round(time.time(), 3)}}))
    try:
        api = stack_admin(stack)
        while entries:
            entry = json.loads(entries[0])
            api.report(entry["action"], entry["target"], entry["detail"])
            entries.pop(0)
    except PodiumError as exc:
        StackSecrets.write_private(waiting, "".join(f"{e}\n" for e in entries))
        return (f"{action} {target} is not in the audit log yet ({exc}); it waits in {waiting}"
                " and goes in at the next podium up or model change")
    waiting.unlink(missing_ok=True)
    return None


def key_file(stack: str, name: str) -> Path:
    return StackSecrets(stack).path("keys") / name


def _keep(stack: str, name: str, secret: str) -> None:
    path = key_file(stack, name)
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    StackSecrets.write_private(path, secret + "\n")
