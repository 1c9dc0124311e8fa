"""Teams and budgets in money on a real gateway: a burst cannot overspend by more than one
request's worst case, team limits bind every key in the team, usage by team and spend."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from podium.services.gateway.budgets import MICRO, worst_cost
from podium.services.gateway.config import Price
from tests.fixtures_engines import (
    EngineServer,
    engine_dir,
    llama_server,
    llama_server_bin,
    tiny_gguf,
)
from tests.fixtures_gateway import (
    GatewayFactory,
    GatewayProcess,
    http,
    models_for,
    podium,
    postgres_server,
    usage_rows,
)
from tests.test_gateway_keys import admin_flags
from tests.test_gateway_lifecycle import stack_secrets
from tests.test_gateway_limits import fresh_minute

__all__ = ["engine_dir", "llama_server", "llama_server_bin", "postgres_server", "stack_secrets",
           "tiny_gguf"]

pytestmark = pytest.mark.engines
CHAT = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8}
PRICE = Price(prompt_per_1k=0.5, completion_per_1k=1.5)  # models_for's price of 'tiny'


@pytest.fixture(scope="module")
def gw(llama_server: EngineServer, tmp_path_factory: pytest.TempPathFactory
       ) -> Iterator[GatewayProcess]:
    factory = GatewayFactory(tmp_path_factory.mktemp("gateway-budgets"))
    try:
        yield factory.start(models=models_for(llama_server.url, llama_server.model))
    finally:
        factory.stop_all()


def chat(gw: GatewayProcess, key: str, model: str = "tiny") -> tuple[int, dict[str, str], dict]:
    status, headers, body = http("POST", gw.url + "/v1/chat/completions", key,
                                 {**CHAT, "model": model})
    return status, {k.lower(): v for k, v in headers.items()}, json.loads(body)


def spent(gw: GatewayProcess, *keys: str) -> float:
    return sum(r["cost"] for name in keys for r in usage_rows(gw.store, name))


def burst_until_spent(gateways: list[GatewayProcess], team: str, budget: float) -> float:
    """Bursts of 30 concurrent requests over the team's three keys (and the gateways) until
    one burst admits nothing; checks and prints the overspend, returns the spend."""
    first = gateways[0]
    first.admin.put_team(team, {"budget": f"{budget}/day"})
    names = [f"{team}-{i}" for i in range(3)]
    keys = [first.new_key(name, team=team) for name in names]
    statuses: Counter[int] = Counter()
    codes: Counter[str] = Counter()
    for _ in range(8):
        with ThreadPoolExecutor(30) as pool:
            answers = list(pool.map(
                lambda i: chat(gateways[i % len(gateways)], keys[i % 3]), range(30)))
        statuses.update(a[0] for a in answers)
        codes.update(a[2].get("error", {}).get("code", "") for a in answers)
        if all(a[0] == 429 for a in answers):
            break
    total = spent(first, *names)
    body_bytes = len(json.dumps(CHAT).encode())
    worst = worst_cost(PRICE, body_bytes, body_bytes + 8) / MICRO
    print(f"\nteam budget {budget:.4f}/day, 30 concurrent requests per burst over"
          f" {len(gateways)} gateway(s): admitted {statuses[200]}, refused {statuses[429]};"
          f" spent {total:.6f}, overspend {max(0.0, total - budget):.6f}"
          f" (one request's worst case: {worst:.6f})")
    assert set(statuses) == {200, 429} and set(codes) - {""} == {"budget_exceeded"}, statuses
    assert total <= budget + worst, f"spent {total} of a {budget} budget"
    assert total > budget - worst, "the budget stopped spend well before it was spent"
    refused = chat(first, keys[0])
    assert refused[0] == 429 and f"team '{team}' spent its budget of {budget:g} per day" in \
        refused[2]["error"]["message"]
    assert 0 < int(refused[1]["retry-after"]) <= 86401
    counted = {(b["kind"], b["name"]): b["spent"] for b in first.admin.budgets()}
    assert counted[("team", team)] == pytest.approx(total, abs=1e-5), \
        "settled budget counters differ from the usage records"
    return total


def test_thirty_concurrent_requests_never_overspend_a_team_budget_by_more_than_one_request(
    gw: GatewayProcess,
) -> None:
    burst_until_spent([gw], "burst", 0.10)


def test_two_gateways_on_postgresql_hold_one_team_budget(
    postgres_pair: list[GatewayProcess],
) -> None:
    burst_until_spent(postgres_pair, "shared", 0.10)


def test_key_budget_and_the_teams_rate_and_models_bind_every_key(gw: GatewayProcess) -> None:
    alone = gw.new_key("kb", budget="0.02/day")
    answers = [chat(gw, alone) for _ in range(4)]
    assert [a[0] for a in answers][:1] == [200] and answers[-1][0] == 429
    assert "key 'kb' spent its budget of 0.02 per day" in answers[-1][2]["error"]["message"]
    assert spent(gw, "kb") <= 0.02 + worst_cost(PRICE, 100, 108) / MICRO

    gw.admin.put_team("slow", {"models": ["tiny"], "rpm": 2})
    one, two = gw.new_key("slow-1", team="slow"), gw.new_key("slow-2", team="slow")
    fresh_minute()
    assert [chat(gw, k)[0] for k in (one, two)] == [200, 200]
    status, _, body = chat(gw, one)
    assert status == 429 and "team 'slow' made its 2 requests this minute" in body["error"]["message"]
    assert chat(gw, two, model="tiny-b")[0] == 404, "the team may not use tiny-b"


def test_usage_by_team_and_spend_against_budget(gw: GatewayProcess) -> None:
    gw.admin.put_team("report", {"budget": "3/month"})
    key = gw.new_key("report-1", team="report")
    assert chat(gw, key)[0] == 200
    run = podium("usage", "--by", "team", "--json", *admin_flags(gw))
    assert run.exit_code == 0, run.error
    lines = {line["team"]: line for line in json.loads(run.stdout)}
    assert lines["report"]["requests"] == 1 and lines["report"]["cost"] > 0
    table = podium("usage", "--by", "team,key", *admin_flags(gw)).stdout
    assert "spend against budget" in table and "report" in table and "3.0000" in table
    csv = podium("usage", "--by", "team", "--csv", *admin_flags(gw)).stdout
    assert csv.splitlines()[0].startswith("team,requests")


def test_declared_teams_reconcile_before_and_after_their_keys(gw: GatewayProcess,
                                                            stack_secrets: str) -> None:
    from podium.gateway_access import key_file, reconcile_declared_keys

    teams = [{"name": "t-dec", "models": "*", "rpm": None, "tpm": None, "budget": "1/day"}]
    keys = [{"name": "t-dec-key", "team": "t-dec", "budget": "0.5/day"}]
    made = reconcile_declared_keys(stack_secrets, gw.url, keys, teams)
    assert [c.describe() for c in made] == ["create team t-dec", "create key t-dec-key"]
    assert reconcile_declared_keys(stack_secrets, gw.url, keys, teams) == [], "not idempotent"
    secret = key_file(stack_secrets, "t-dec-key").read_text().strip()
    assert chat(gw, secret)[0] == 200
    teams[0]["budget"] = "2/day"
    assert [c.describe() for c in reconcile_declared_keys(stack_secrets, gw.url, keys, teams)] \
        == ["update team t-dec: budget 1/day -> 2/day"]
    gone = reconcile_declared_keys(stack_secrets, gw.url, [], [])
    assert [c.describe() for c in gone] == ["remove team t-dec", "revoke key t-dec-key"]
    assert [t["name"] for t in gw.admin.teams() if t["name"] == "t-dec"] == []
    actions = [(e["action"], e["target"]) for e in gw.admin.audit() if "t-dec" in e["target"]]
    assert actions == [("team.create", "t-dec"), ("key.create", "t-dec-key"),
                       ("team.update", "t-dec"), ("key.revoke", "t-dec-key"),
                       ("team.remove", "t-dec")]


def test_unknown_teams_are_refused_in_one_sentence(gw: GatewayProcess, tmp_path: Path) -> None:
    from podium.errors import InvalidInput
    from podium.stack import load_stack

    run = podium("keys", "create", "--name", "lost", "--team", "nope", *admin_flags(gw))
    assert run.exit_code == 2 and "no team named 'nope'" in run.error, run
    assert "lost" not in {k["name"] for k in gw.admin.list_keys()}
    gw.admin.put_team("busy", {})
    gw.new_key("busy-1", team="busy")
    status, _, body = http("DELETE", gw.url + "/admin/v1/teams/busy", gw.admin_token)
    assert status == 409 and "still has keys busy-1" in json.loads(body)["error"]["message"]
    folder = tmp_path / "st"
    folder.mkdir()
    (folder / "stack.yaml").write_text(
        "name: st\nnodes: [{name: n1, address: 127.0.0.1}]\n"
        "network: {admin_sources: [127.0.0.1/32]}\n"
        "gateway: {nodes: [n1], tls: false, keys: [{name: k, team: nope}]}\n")
    with pytest.raises(InvalidInput) as refused:
        load_stack(str(folder))
    message = str(refused.value)
    assert "gateway.keys[0].team" in message or "gateway.keys.0.team" in message, message
    assert "nope" in message and "is not a team of gateway.teams" in message


def test_metrics_carry_cost_by_team_and_spend_against_budget(gw: GatewayProcess) -> None:
    """What the dashboards' budget rows read: cost by key and team, and each budget's spend."""
    import urllib.request

    gw.admin.put_team("metered", {"budget": "2/month"})
    key = gw.new_key("metered-1", team="metered", budget="1/day")
    assert chat(gw, key)[0] == 200
    cost = spent(gw, "metered-1")
    with urllib.request.urlopen(gw.metrics_url, timeout=10) as resp:
        text = resp.read().decode()
    samples = {line.rpartition(" ")[0]: float(line.rpartition(" ")[2])
               for line in text.splitlines() if line and not line.startswith("#")}
    assert samples['podium_gateway_cost_total{key="metered-1",model="tiny",team="metered"}'] \
        == pytest.approx(cost)
    for owner, name, period, budget in (("team", "metered", "month", 2.0),
                                        ("key", "metered-1", "day", 1.0)):
        labels = f'{{name="{name}",owner="{owner}",period="{period}"}}'
        assert samples["podium_gateway_budget" + labels] == budget
        assert samples["podium_gateway_budget_spent" + labels] == pytest.approx(cost, abs=1e-5)
