"""A stack's declared keys against a gateway's keys: the creations, updates and revocations
that make the gateway hold what the stack says."""

from __future__ import annotations

import time
from collections.abc import Collection, Iterable
from dataclasses import dataclass, field
from typing import Any

from podium.services.gateway.config import parse_quota
from podium.services.gateway.keys import SETTINGS, budget_text, parse_budget, parse_expiry


@dataclass(frozen=True)
class KeyChange:
    """One key (or team) to create, update (field: (now, declared)) or revoke (remove)."""

    action: str
    name: str
    fields: dict[str, tuple[Any, Any]] = field(default_factory=dict)
    kind: str = "key"

    def describe(self) -> str:
        if self.action != "update":
            return f"{self.action} {self.kind} {self.name}"
        moves = ", ".join(f"{f} {_shown(f, old)} -> {_shown(f, new)}"
                          for f, (old, new) in self.fields.items())
        return f"update {self.kind} {self.name}: {moves}"


def _shown(name: str, value: Any) -> str:
    if value is None:
        return "none"
    if name == "expires_at":
        return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(value))
    if isinstance(value, list):
        return ",".join(str(v) for v in value)
    return str(value)


def declared_settings(key: dict[str, Any]) -> dict[str, Any]:
    """A `gateway.keys` entry of a stack as key settings, written as the gateway writes them."""
    models = key.get("models") or "*"
    quota = key.get("quota")
    budget = key.get("budget")
    if quota is not None:
        amount, period = parse_quota(str(quota))
        quota = f"{amount}/{period}"
    if budget is not None:
        money, per = parse_budget(str(budget))
        budget = budget_text(money, per)
    expires = key.get("expires")
    return {
        "models": ["*"] if models == "*" else list(models),
        "rpm": key.get("rpm"), "tpm": key.get("tpm"), "quota": quota,
        "expires_at": parse_expiry(str(expires)) if expires else None,
        "max_in_flight": key.get("max_in_flight"), "team": key.get("team"), "budget": budget,
    }


def stored_settings(key: dict[str, Any]) -> dict[str, Any]:
    """A key as the admin API lists it, as key settings."""
    return {
        "models": list(key["models"]), "rpm": key.get("rpm"), "tpm": key.get("tpm"),
        "quota": None if key.get("quota") is None else f"{key['quota']}/{key['quota_period']}",
        "expires_at": key.get("expires_at"), "max_in_flight": key.get("max_in_flight"),
        "team": key.get("team"),
        "budget": (None if key.get("budget") is None
                   else budget_text(key["budget"], key["budget_period"])),
    }


def key_changes(declared: Iterable[dict[str, Any]], existing: Iterable[dict[str, Any]],
                managed: Collection[str]) -> list[KeyChange]:
    """What turns `existing` (as listed by the admin API) into `declared` (the stack's entries).

    Only keys in `managed` (ones the stack declared before) are revoked when no longer
    declared: keys made by hand are not the stack's to remove. A revoked key stays revoked.

    Example: key_changes([{"name": "ci", "rpm": 30}], gw.admin.list_keys(), {"ci", "old"})
    """
    have = {k["name"]: k for k in existing}
    names = set()
    changes = []
    for entry in declared:
        name = entry["name"]
        names.add(name)
        current = have.get(name)
        if current is None:
            changes.append(KeyChange("create", name))
            continue
        if current.get("state") == "revoked":
            continue
        want, now = declared_settings(entry), stored_settings(current)
        moved = {f: (now[f], want[f]) for f in SETTINGS if now[f] != want[f]}
        if moved:
            changes.append(KeyChange("update", name, moved))
    for name in sorted(set(managed) - names):
        if name in have and have[name].get("state") != "revoked":
            changes.append(KeyChange("revoke", name))
    return changes


def as_listed(declared: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """Declared entries in the form the admin API lists keys (to compare two declarations)."""
    listed = []
    for entry in declared:
        s = declared_settings(entry)
        quota = s["quota"].split("/") if s["quota"] else (None, None)
        budget = s["budget"].split("/") if s["budget"] else (None, None)
        listed.append({
            **s, "name": entry["name"], "state": "active",
            "quota": None if quota[0] is None else int(quota[0]), "quota_period": quota[1],
            "budget": None if budget[0] is None else float(budget[0]), "budget_period": budget[1],
        })
    return listed


def team_settings(team: dict[str, Any]) -> dict[str, Any]:
    """A team (a stack's `gateway.teams` entry, or as the admin API lists it) as settings."""
    models = team.get("models") or "*"
    budget = team.get("budget")
    if isinstance(budget, int | float) and not isinstance(budget, bool):
        budget = budget_text(budget, team.get("budget_period"))
    elif budget is not None:
        money, per = parse_budget(str(budget))
        budget = budget_text(money, per)
    return {"models": ["*"] if models == "*" else list(models), "rpm": team.get("rpm"),
            "tpm": team.get("tpm"), "budget": budget}


def team_changes(declared: Iterable[dict[str, Any]], existing: Iterable[dict[str, Any]],
                 managed: Collection[str]) -> list[KeyChange]:
    """Teams to create or update, then the teams in `managed` (declared before) to remove."""
    have = {t["name"]: team_settings(t) for t in existing}
    changes, names = [], set()
    for entry in declared:
        names.add(entry["name"])
        want, now = team_settings(entry), have.get(entry["name"])
        if now is None:
            changes.append(KeyChange("create", entry["name"], kind="team"))
            continue
        moved = {f: (now[f], want[f]) for f in want if now[f] != want[f]}
        if moved:
            changes.append(KeyChange("update", entry["name"], moved, kind="team"))
    gone = (set(have) & set(managed)) - names
    changes += [KeyChange("remove", name, kind="team") for name in sorted(gone)]
    return changes
