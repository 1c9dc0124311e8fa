"""The console's pages and their JSON twins against a real gateway in front of llama-server:
what each shows, made by the admin API's handlers, and releases read from node records."""

from __future__ import annotations

import csv
import html
import io
import json
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from podium.releases.record import ComponentRelease, Release
from podium.services.gateway.console_chart import bar_chart, days_back
from podium.services.gateway.console_figures import bucket_quantile
from tests.fixtures_console import ConsoleClient
from tests.fixtures_engines import (
    EngineServer,
    engine_dir,
    llama_server,
    llama_server_bin,
    tiny_gguf,
)
from tests.fixtures_gateway import GatewayFactory, GatewayProcess, free_port, http, models_for

__all__ = ["engine_dir", "llama_server", "llama_server_bin", "tiny_gguf"]

pytestmark = pytest.mark.engines
CHAT = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}


def release(number: int, gateway_version: str, digest: str, kind: str = "up") -> Release:
    return Release(
        number=number, stack="consoled", created_at=f"2026-11-0{number}T10:00:00+00:00",
        by="ops@control", kind=kind, stack_digest="sha256:" + "a" * 64,
        versions_digest="sha256:" + "b" * 64, models={"tiny-llama:1": digest},
        hosts={"gw1": {
            "gateway": ComponentRelease(version=gateway_version, config_hash="c" * 12),
            "engine-llamacpp": ComponentRelease(version="b4000", config_hash="d" * 12,
                                                model_digests=[digest]),
        }, "node2": {"base": ComponentRelease(version="1", config_hash="e" * 12)}},
    )


@pytest.fixture(scope="module")
def releases_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two releases as `podium up` records them on node gw1 (Release.for_host's records)."""
    folder = tmp_path_factory.mktemp("node-releases")
    for r in (release(1, "0.1.0+aaaaaaaaaaaa", "sha256:" + "1" * 64),
              release(2, "0.1.0+bbbbbbbbbbbb", "sha256:" + "2" * 64)):
        (folder / f"{r.number:04d}.json").write_text(json.dumps(r.for_host("gw1")))
    (folder / "current.json").write_text(json.dumps(r.for_host("gw1")))
    return folder


@pytest.fixture(scope="module")
def gw(llama_server: EngineServer, releases_dir: Path,
       tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    factory = GatewayFactory(tmp_path_factory.mktemp("console-pages"))
    try:
        yield factory.start(models=models_for(llama_server.url, llama_server.model), console={
            "sources": ["127.0.0.1/32"], "releases_dir": str(releases_dir),
            # Nothing listens there: the overview must say so and show the gateway's own.
            "prometheus_url": f"http://127.0.0.1:{free_port()}"})
    finally:
        factory.stop_all()


@pytest.fixture(scope="module")
def operator(gw: GatewayProcess) -> ConsoleClient:
    client = ConsoleClient(gw.port)
    assert client.login(gw.admin_token).status == 303
    return client


def twin(client: ConsoleClient, path: str) -> Any:
    answer = client.call("GET", f"/console/api/{path}")
    assert answer.status == 200, (path, answer.body[:500])
    assert answer.headers["content-type"] == "application/json"
    return json.loads(answer.body)


def page(client: ConsoleClient, path: str) -> str:
    answer = client.call("GET", f"/console/{path}")
    assert answer.status == 200, (path, answer.body[:500])
    return html.unescape(answer.body)


def created_secret(client: ConsoleClient, name: str, **settings: str) -> str:
    answer = client.call("POST", "/console/keys", {"name": name, "csrf": client.csrf(), **settings})
    assert answer.status == 201, answer.body[-800:]
    found = re.search(r'<code id="secret">(pdm-[^<]+)</code>', answer.body)
    assert found, "the new key's secret is not on the page"
    return found.group(1)


def refused_within(gw: GatewayProcess, secret: str, seconds: float) -> bool:
    """401 for the key once the gateway's key cache (key_cache_s, 1 s here) has let it go."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if http("POST", gw.url + "/v1/chat/completions", secret, CHAT)[0] == 401:
            return True
        time.sleep(0.2)
    return False


def test_a_key_made_in_the_console_serves_is_metered_shown_and_revoked(
        gw: GatewayProcess, operator: ConsoleClient) -> None:
    secret = created_secret(operator, "pages-key", models="tiny", rpm="60", quota="1000/day")
    # Shown once: the list shows its prefix and settings, never the secret again.
    keys = twin(operator, "keys")["keys"]
    mine = next(k for k in keys if k["name"] == "pages-key")
    assert (mine["state"], mine["models"], mine["rpm"], mine["quota"]) == ("active", ["tiny"], 60,
                                                                         1000)
    assert secret not in page(operator, "keys") and secret not in json.dumps(keys)
    status, _, _ = http("POST", gw.url + "/v1/chat/completions", secret, CHAT)
    assert status == 200
    usage = twin(operator, "usage?by=key&days=2")
    line = next(ln for ln in usage["lines"] if ln["key"] == "pages-key")
    assert line["requests"] == 1 and line["completion_tokens"] > 0
    today = days_back(1)[0]
    assert usage["per_day"][today] >= 1
    shown = page(operator, "usage?by=key&days=2")
    assert re.search(rf'<rect class="bar"[^>]*data-label="{today}" data-value="[1-9]', shown)
    assert "pages-key" in shown
    download = operator.call("GET", "/console/usage.csv?by=key,model&days=2")
    assert download.headers["content-type"].startswith("text/csv")
    rows = {r["key"]: r for r in csv.DictReader(io.StringIO(download.body))}
    assert rows["pages-key"]["model"] == "tiny" and rows["pages-key"]["requests"] == "1"
    revoke = operator.call("POST", "/console/keys/pages-key/revoke", {"csrf": operator.csrf()})
    assert (revoke.status, revoke.headers["location"]) == (303, "/console/keys")
    assert refused_within(gw, secret, seconds=3)
    actions = [(e["action"], e["target"]) for e in twin(operator, "audit")["entries"]]
    assert ("key.revoke", "pages-key") in actions and ("key.create", "pages-key") in actions
    audit = page(operator, "audit")
    assert "The chain of" in audit and "holds" in audit


def test_a_key_is_changed_and_rotated_in_the_console(gw: GatewayProcess,
                                                    operator: ConsoleClient) -> None:
    old = created_secret(operator, "changing-key", rpm="60", team="")
    change = operator.call("POST", "/console/keys/change",
                           {"name": "changing-key", "rpm": "5", "quota": "100/day",
                            "csrf": operator.csrf()})
    assert (change.status, change.headers["location"]) == (303, "/console/keys")
    mine = next(k for k in twin(operator, "keys")["keys"] if k["name"] == "changing-key")
    assert (mine["rpm"], mine["quota"], mine["quota_period"]) == (5, 100, "day")
    cleared = operator.call("POST", "/console/keys/change",
                            {"name": "changing-key", "rpm": "-", "csrf": operator.csrf()})
    assert cleared.status == 303
    mine = next(k for k in twin(operator, "keys")["keys"] if k["name"] == "changing-key")
    assert (mine["rpm"], mine["quota"]) == (None, 100)
    nothing = operator.call("POST", "/console/keys/change",
                            {"name": "changing-key", "csrf": operator.csrf()})
    assert nothing.status == 400 and "fill in at least one setting" in html.unescape(nothing.body)
    unknown = operator.call("POST", "/console/keys/change",
                            {"name": "no-such-key", "rpm": "1", "csrf": operator.csrf()})
    assert unknown.status == 404 and "no key named 'no-such-key'" in html.unescape(unknown.body)
    rotated = operator.call("POST", "/console/keys/changing-key/rotate", {"csrf": operator.csrf()})
    assert rotated.status == 200 and "rotated (the old secret works until" in rotated.body
    found = re.search(r'<code id="secret">(pdm-[^<]+)</code>', rotated.body)
    assert found and found.group(1) != old
    assert http("POST", gw.url + "/v1/chat/completions", found.group(1), CHAT)[0] == 200
    assert http("POST", gw.url + "/v1/chat/completions", old, CHAT)[0] == 200  # its grace hour
    actions = [e["action"] for e in twin(operator, "audit")["entries"]
               if e["target"] == "changing-key"]
    assert actions == ["key.rotate", "key.update", "key.update", "key.create"]


def test_an_unknown_grouping_is_refused_in_one_sentence(operator: ConsoleClient) -> None:
    answer = operator.call("GET", "/console/api/usage?by=colour")
    assert answer.status == 400
    assert answer.body == "by 'colour' is not a grouping; use any of key, model, day, team\n"
    assert operator.call("GET", "/console/usage?days=0").status == 400


def test_the_overview_shows_replicas_and_says_where_its_figures_come_from(
        gw: GatewayProcess, operator: ConsoleClient) -> None:
    assert http("POST", gw.url + "/v1/chat/completions",
                gw.new_key("overview-key"), {**CHAT, "stream": True})[0] == 200
    data = twin(operator, "overview")
    assert data["up"] == 2 and data["down"] == 0  # tiny and tiny-b, one replica each
    assert {r["model"] for r in data["replicas"]} == {"tiny", "tiny-b"}
    assert data["source"].startswith("cannot reach Prometheus at http://127.0.0.1:")
    assert "shown instead: this gateway" in data["source"]
    tiny = next(m for m in data["models"] if m["model"] == "tiny")
    assert tiny["requests_per_s"] > 0 and tiny["ttft_p95_s"] is not None
    assert "Source: cannot reach Prometheus" in page(operator, "")


def test_models_and_releases_come_from_the_gateway_and_its_nodes_records(
        operator: ConsoleClient) -> None:
    models = twin(operator, "models")
    assert [m["name"] for m in models["models"]] == ["tiny", "tiny-b"]
    assert models["registry"] == [{"ref": "tiny-llama:1", "name": "tiny-llama", "version": "1",
                                   "digest": "sha256:" + "2" * 64}]
    found = twin(operator, "releases")
    assert [(r["number"], r["changed"]) for r in found["history"]] == [
        (1, ["engine-llamacpp", "gateway"]), (2, ["engine-llamacpp", "gateway"])]
    assert found["history"][0]["rollback"] == "podium rollback STACK --to 1"
    changes = twin(operator, "releases?a=1&b=2")["changes"]
    assert {"host": "gw1", "component": "gateway", "what": "version",
            "before": "0.1.0+aaaaaaaaaaaa", "after": "0.1.0+bbbbbbbbbbbb"} in changes
    assert all(c["host"] == "gw1" for c in changes)  # a node keeps its own components only
    shown = page(operator, "releases?a=1&b=3")
    assert "release 3 is not recorded on this node (releases: 1, 2)" in shown


def test_without_a_releases_folder_the_page_says_where_to_look(tmp_path: Path) -> None:
    from podium.services.gateway.console_releases import node_releases

    assert node_releases(None)[0] == []
    assert "podium history STACK" in node_releases(None)[1]
    assert "does not exist" in node_releases(tmp_path / "none")[1]


def test_the_p95_of_a_histogram_is_read_as_prometheus_reads_it() -> None:
    # 100 observations: 50 at or under 0.1 s, 90 under 0.5 s, all under 1 s.
    buckets = [(0.1, 50.0), (0.5, 90.0), (1.0, 100.0), (float("inf"), 100.0)]
    assert bucket_quantile(0.95, buckets) == pytest.approx(0.75)
    assert bucket_quantile(0.5, buckets) == pytest.approx(0.1)
    assert bucket_quantile(0.95, [(0.1, 0.0), (float("inf"), 0.0)]) is None
    assert bucket_quantile(0.95, [(0.1, 1.0), (float("inf"), 10.0)]) == 0.1


def test_the_chart_has_one_bar_per_day_scaled_to_the_largest() -> None:
    svg = bar_chart({"2026-11-29": 2, "2026-11-30": 4}, "requests <per> day", "requests")
    bars = re.findall(r'height="([\d.]+)" fill="#2f6fb0" data-label="([\d-]+)" data-value="(\d+)"',
                      svg)
    assert [(label, value) for _, label, value in bars] == [("2026-11-29", "2"), ("2026-11-30", "4")]
    assert float(bars[0][0]) * 2 == pytest.approx(float(bars[1][0]))
    assert "requests &lt;per&gt; day" in svg and "<script" not in svg
