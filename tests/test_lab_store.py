"""The gateways' store on real lab machines (a copy of tests/stacks/labstore under a name and
subnet of its own): `podium lab up` lays PostgreSQL down on ctrl and two gateways on ctrl and
node1 sharing one address, and `podium verify` proves its TLS, scram account, pg_hba, firewall
and nightly dump. A key created through one gateway is honoured by the other and its usage is
counted once, in the one store; under load split across both gateways a key's rpm admits exactly
its limit, its tpm charge ends within one reservation of the limit, and usage equals
llama-server's own counters; the address moves when its gateway is killed and a client sees no
failure; a PostgreSQL restart loses no usage record; a second `podium up` changes nothing.
Measured figures go to build/lab-store-ha.json."""

from __future__ import annotations

import json
import shlex
import ssl
import subprocess
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest

from podium.gateway_access import admin_api
from podium.render import REPO
from podium.secrets import StackSecrets
from podium.services.gateway.keys import KeySpec
from podium.stack import load_stack
from podium.verify import ssh_config
from tests.fixtures_lab import UniqueStack, podium, remove_stack_state, require_lab_host, unique_stack

pytestmark = pytest.mark.lab

SOURCE = REPO / "tests" / "stacks" / "labstore"
FIGURES = REPO / "build" / "lab-store-ha.json"
CHAT = [{"role": "user", "content": "Hi"}]


def line(output: str, prefix: str) -> str:
    found = [x.removeprefix(prefix).strip() for x in output.splitlines() if x.startswith(prefix)]
    assert found, f"no line starting {prefix!r} in:\n{output}"
    return found[-1]


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    require_lab_host()
    copy: UniqueStack = unique_stack(SOURCE, tmp_path_factory.mktemp("store"))
    folder = str(copy.folder)
    try:
        up = podium("lab", "up", folder)
        assert up.returncode == 0, up.stdout[-3000:] + up.stderr[-5000:]
        stack = load_stack(folder)
        trust = ssl.create_default_context(cafile=line(up.stdout, "ca: "))
        yield {"copy": copy, "folder": folder, "up": up, "url": f"https://{copy.prefix}20:8443", "trust": trust,
               "ssh": ssh_config(stack, StackSecrets(stack.name))}
    finally:
        down = podium("lab", "down", folder, timeout=600)
        if down.returncode == 0:
            remove_stack_state(copy.name)
        assert down.returncode == 0, down.stderr


def test_verify_proves_the_store_and_both_gateways(lab: dict[str, Any]) -> None:
    said = lab["up"].stdout + lab["up"].stderr
    for what in ("✓ verify store on ctrl", "✓ verify gateway on ctrl", "✓ verify gateway on node1"):
        assert what in said, f"{what!r} missing from podium lab up's output"


def test_a_key_made_through_one_gateway_works_on_the_other_and_is_metered_once(lab: dict[str, Any]) -> None:
    up, prefix = lab["up"].stdout, lab["copy"].prefix
    key, ca = line(up, "key: "), line(up, "ca: ")
    # podium lab up prints the gateways' one address (gateway.address).
    assert line(up, "gateway: ") == f"https://{prefix}20:8443/v1", line(up, "gateway: ")
    first, second = f"https://{prefix}10:8443/v1", f"https://{prefix}11:8443/v1"
    trust = ssl.create_default_context(cafile=ca)
    body = {"model": "tiny-llama", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4}
    with httpx.Client(verify=trust, timeout=120, headers={"Authorization": f"Bearer {key}"}) as client:
        for url in (first, second):
            answer = client.post(f"{url}/chat/completions", json=body)
            assert answer.status_code == 200, f"{url}: {answer.status_code} {answer.text[:300]}"
    usage = podium("usage", lab["folder"], "--by", "key", "--json", timeout=120)
    assert usage.returncode == 0, usage.stderr
    # The key `podium lab up` printed is named lab-<time>; `podium verify`'s own keys are not.
    rows = [r for r in json.loads(usage.stdout) if str(r["key"]).startswith("lab-")]
    assert [r["requests"] for r in rows] == [2], rows


def on_node(lab: dict[str, Any], node: str, command: str, timeout: float = 60) -> str:
    """`command` run by the node's shell over the lab's own SSH config; its output, or fails."""
    done = subprocess.run(["ssh", "-F", str(lab["ssh"]), node, command], capture_output=True, text=True,
                          timeout=timeout)
    assert done.returncode == 0, f"{node}: {command}: rc {done.returncode} {done.stderr[-1000:]}"
    return done.stdout


def record(name: str, figures: dict[str, Any]) -> None:
    """Measured figures, kept under build/ so a run's numbers can be reported."""
    FIGURES.parent.mkdir(exist_ok=True)
    known = json.loads(FIGURES.read_text()) if FIGURES.exists() else {}
    known[name] = figures
    FIGURES.write_text(json.dumps(known, indent=2) + "\n")


def stored(lab: dict[str, Any], key: str) -> list[dict[str, Any]]:
    """The key's usage records as PostgreSQL on ctrl holds them."""
    sql = ("SELECT coalesce(json_agg(json_build_object('id', request_id, 'status', status, 'prompt', prompt_tokens,"
           f" 'completion', completion_tokens)), '[]') FROM gateway_usage WHERE key_name = '{key}'")
    out = on_node(lab, "ctrl", f"runuser -u postgres -- psql -XtAq -d podium -c {shlex.quote(sql)}")
    rows: list[dict[str, Any]] = json.loads(out)
    return rows


def stored_eventually(lab: dict[str, Any], key: str, ids: set[str], within: float = 30) -> list[dict[str, Any]]:
    """The key's records once every id in `ids` is among them (a spooled record reaches the
    store within seconds), or as they are at `within` seconds."""
    deadline = time.monotonic() + within
    while True:
        rows = stored(lab, key)
        if ids <= {r["id"] for r in rows} or time.monotonic() > deadline:
            return rows
        time.sleep(1)


def engine_counters(lab: dict[str, Any]) -> dict[str, float]:
    """llama-server's own token counters, read on node1 (its port is open to the gateways only)."""
    text = on_node(lab, "node1", f"curl -fsS http://{lab['copy'].prefix}11:8080/metrics")
    found = {}
    for row in text.splitlines():
        if row.startswith("llamacpp:"):
            name, _, value = row.partition(" ")
            found[name.removeprefix("llamacpp:")] = float(value)
    return found


def new_key(lab: dict[str, Any], name: str, **limits: Any) -> str:
    secret: str = admin_api(lab["copy"].name, lab["url"]).create_key(KeySpec(name=name, **limits))["key"]
    return secret


def same_minute_window() -> int:
    """The rate counters' minute window, started where at least 15 s of it are left."""
    if time.time() % 60 > 40:
        time.sleep(60 - time.time() % 60 + 0.5)
    return int(time.time() // 60)


def engine_usage(before: dict[str, float], after: dict[str, float]) -> tuple[float, float]:
    """Prompt and generated tokens llama-server counted between two readings."""
    prompt = (after["prompt_tokens_total"] - before["prompt_tokens_total"]
              + after.get("prompt_tokens_cached_total", 0) - before.get("prompt_tokens_cached_total", 0))
    return prompt, after["tokens_predicted_total"] - before["tokens_predicted_total"]


RPM = 10


def test_one_keys_rpm_admits_exactly_its_limit_over_both_gateways(lab: dict[str, Any]) -> None:
    """Four clients, two on each gateway's own address, inside one fixed minute window (the rpm
    counter's): the store admits exactly RPM, the rest get 429, and the usage of the key equals
    what llama-server counted."""
    name = f"ha-rpm-{int(time.time())}"
    key = new_key(lab, name, rpm=RPM)
    window = same_minute_window()
    before = engine_counters(lab)
    prefix, results, lock = lab["copy"].prefix, [], threading.Lock()
    stop = time.time() + 12

    def client(url: str) -> None:
        body = {"model": "tiny-llama", "messages": CHAT, "max_tokens": 4}
        with httpx.Client(verify=lab["trust"], timeout=60, headers={"Authorization": f"Bearer {key}"}) as http:
            while time.time() < stop:
                answer = http.post(f"{url}/chat/completions", json=body)
                with lock:
                    results.append((answer.status_code, answer.headers.get("x-request-id"), time.time()))
                if answer.status_code == 429:
                    time.sleep(0.25)

    urls = [f"https://{prefix}{n}:8443/v1" for n in (10, 10, 11, 11)]
    threads = [threading.Thread(target=client, args=(u,)) for u in urls]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    statuses = [s for s, _, _ in results]
    admitted = {i for s, i, _ in results if s == 200}
    assert all(int(at // 60) == window for _, _, at in results), "the run crossed a minute window"
    assert set(statuses) <= {200, 429}, f"answers other than 200 and 429: {sorted(set(statuses))}"
    rows = stored_eventually(lab, name, admitted)
    after = engine_counters(lab)
    counted = [r for r in rows if r["status"] == 200]
    prompt, generated = engine_usage(before, after)
    figures = {"limit": RPM, "requests": len(results), "admitted": len(admitted),
               "refused_429": statuses.count(429), "overshoot": len(admitted) - RPM,
               "records": len(counted), "record_prompt_tokens": sum(r["prompt"] for r in counted),
               "engine_prompt_tokens": prompt, "record_completion_tokens": sum(r["completion"] for r in counted),
               "engine_completion_tokens": generated}
    record("rpm_over_two_gateways", figures)
    assert len(admitted) == RPM and statuses.count(429) > 0, f"rpm {RPM} over both gateways: {figures}"
    assert {r["id"] for r in counted} == admitted, f"usage records are not the admitted requests: {figures}"
    assert figures["record_prompt_tokens"] == prompt and figures["record_completion_tokens"] == generated, (
        f"usage differs from llama-server's own counters: {figures}")


TPM = 200


def test_one_keys_tpm_charge_stays_within_one_reservation_over_both_gateways(lab: dict[str, Any]) -> None:
    """Four clients, two on each gateway's own address, in one minute window: each request
    reserves its worst case (body bytes + max_tokens) in PostgreSQL before it is sent and settles
    to what it used, so what the key is charged ends within one reservation of its tpm, the
    counter equals the usage records, and the records equal llama-server's own counters."""
    name = f"ha-tpm-{int(time.time())}"
    created = admin_api(lab["copy"].name, lab["url"]).create_key(KeySpec(name=name, tpm=TPM))
    key, key_id = created["key"], created["id"]
    body = {"model": "tiny-llama", "messages": CHAT, "max_tokens": 8}
    # The most one request reserves: every byte of its body (spaced JSON is the longest form
    # a client sends it in), plus its max_tokens.
    reservation = len(json.dumps(body).encode()) + 8
    window = same_minute_window()
    before = engine_counters(lab)
    prefix, results, lock = lab["copy"].prefix, [], threading.Lock()
    stop = time.time() + 12

    def client(url: str) -> None:
        with httpx.Client(verify=lab["trust"], timeout=60, headers={"Authorization": f"Bearer {key}"}) as http:
            while time.time() < stop:
                answer = http.post(f"{url}/chat/completions", json=body)
                code = answer.json().get("error", {}).get("code") if answer.status_code == 429 else None
                with lock:
                    results.append((answer.status_code, answer.headers.get("x-request-id"), code, time.time()))
                if answer.status_code == 429:
                    time.sleep(0.25)

    threads = [threading.Thread(target=client, args=(f"https://{prefix}{n}:8443/v1",)) for n in (10, 10, 11, 11)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert all(int(at // 60) == window for *_, at in results), "the run crossed a minute window"
    statuses = [s for s, *_ in results]
    assert set(statuses) <= {200, 429}, f"answers other than 200 and 429: {sorted(set(statuses))}"
    assert {c for s, _, c, _ in results if s == 429} <= {"tokens_per_minute"}, results
    admitted = {i for s, i, _, _ in results if s == 200}
    counted = [r for r in stored_eventually(lab, name, admitted) if r["status"] == 200]
    served = sum(r["prompt"] + r["completion"] for r in counted)
    charged = int(on_node(lab, "ctrl", "runuser -u postgres -- psql -XtAq -d podium -c " + shlex.quote(
        f"SELECT coalesce(sum(value), 0) FROM gateway_counters WHERE key_id = {key_id} AND kind = 'tpm'"
        f" AND \"window\" = {window * 60}")).strip())
    prompt, generated = engine_usage(before, engine_counters(lab))
    figures = {"limit": TPM, "reservation": reservation, "requests": len(results), "admitted": len(admitted),
               "refused_429": statuses.count(429), "charged": charged, "served_tokens": served,
               "over_limit": max(0, served - TPM), "records": len(counted),
               "record_prompt_tokens": sum(r["prompt"] for r in counted), "engine_prompt_tokens": prompt,
               "record_completion_tokens": sum(r["completion"] for r in counted),
               "engine_completion_tokens": generated}
    record("tpm_over_two_gateways", figures)
    assert admitted and statuses.count(429) > 0, f"tpm {TPM} was not reached over both gateways: {figures}"
    assert {r["id"] for r in counted} == admitted, f"usage records are not the admitted requests: {figures}"
    assert charged == served, f"the tpm counter is not the tokens the records hold: {figures}"
    assert served <= TPM + reservation, f"charged past one reservation over the limit: {figures}"
    assert (figures["record_prompt_tokens"], figures["record_completion_tokens"]) == (prompt, generated), (
        f"usage differs from llama-server's own counters: {figures}")


class Holders:
    """Which gateway node holds the gateways' address, as each node sees it every 50 ms, with
    the node's own clock (lab machines share this machine's kernel, so its clock too)."""

    def __init__(self, lab: dict[str, Any]) -> None:
        address = f"{lab['copy'].prefix}20"
        loop = (f"while :; do if ip -o -4 addr show to {address} | grep -q .; then h=1; else h=0; fi; "
                "echo \"$(date +%s.%N) $h\"; sleep 0.05; done")
        self.seen: dict[str, list[tuple[float, bool]]] = {"ctrl": [], "node1": []}
        self.watchers = [subprocess.Popen(["ssh", "-F", str(lab["ssh"]), node, loop], stdout=subprocess.PIPE,
                                          text=True) for node in self.seen]
        self.readers = [threading.Thread(target=self._read, args=(node, w), daemon=True)
                        for node, w in zip(self.seen, self.watchers, strict=True)]
        for reader in self.readers:
            reader.start()

    def _read(self, node: str, watcher: subprocess.Popen[str]) -> None:
        assert watcher.stdout is not None
        for row in watcher.stdout:
            at, held = row.split()
            self.seen[node].append((float(at), held == "1"))

    def now(self) -> list[str]:
        return [node for node, seen in self.seen.items() if seen and seen[-1][1]]

    def first_held(self, node: str, since: float) -> float | None:
        return next((at for at, held in self.seen[node] if held and at >= since), None)

    def close(self) -> None:
        for watcher in self.watchers:
            watcher.terminate()
            watcher.wait(timeout=10)


def steady_client(lab: dict[str, Any], key: str, stop: threading.Event, out: dict[str, Any]) -> None:
    """The official client with its default retries, one request after the other, to the
    gateways' one address."""
    client = openai.OpenAI(base_url=lab["url"] + "/v1", api_key=key, timeout=30,
                           http_client=httpx.Client(verify=lab["trust"]))
    while not stop.is_set():
        try:
            raw = client.chat.completions.with_raw_response.create(model="tiny-llama", messages=CHAT, max_tokens=4)
            raw.parse()
            out["completed"].append(raw.headers["x-request-id"])
        except openai.OpenAIError as exc:
            out["failed"].append(repr(exc))


def test_killing_the_gateway_holding_the_address_moves_it_and_no_request_fails(lab: dict[str, Any]) -> None:
    name = f"ha-failover-{int(time.time())}"
    key = new_key(lab, name)
    holders = Holders(lab)
    stop, out = threading.Event(), {"completed": [], "failed": []}
    sender = threading.Thread(target=steady_client, args=(lab, key, stop, out))
    try:
        deadline = time.time() + 20
        while len(holders.now()) != 1 and time.time() < deadline:
            time.sleep(0.1)
        assert len(holders.now()) == 1, f"expected one gateway node holding the address, found {holders.now()}"
        active = holders.now()[0]
        other = next(n for n in holders.seen if n != active)
        sender.start()
        time.sleep(3)
        # SIGKILL to the gateway's main process; systemd restarts it (Restart=on-failure).
        killed_at = float(on_node(lab, active, "date +%s.%N; systemctl kill -s KILL --kill-whom=main podium-gateway")
                          .split()[0])
        time.sleep(8)
    finally:
        stop.set()
        sender.join(timeout=120)
        holders.close()
    moved_at = holders.first_held(other, killed_at)
    rows = stored_eventually(lab, name, set(out["completed"]))
    missing = set(out["completed"]) - {r["id"] for r in rows}
    figures = {"killed": active, "moved_to": other,
               "failover_s": round(moved_at - killed_at, 2) if moved_at else None,
               "requests_completed": len(out["completed"]), "requests_failed": len(out["failed"]),
               "records_missing": len(missing)}
    record("failover", figures)
    assert moved_at is not None and moved_at - killed_at <= 3, f"the address did not move within 3 s: {figures}"
    assert not out["failed"] and len(out["completed"]) > 5, f"{figures}; failures: {out['failed'][:3]}"
    assert not missing, f"completed responses without a usage record: {figures}"
    # systemd brings the killed gateway back; the address stays where it moved (nopreempt).
    on_node(lab, active, "for i in $(seq 60); do systemctl is-active --quiet podium-gateway && exit 0; sleep 0.5;"
                         " done; exit 1")


def test_a_postgresql_restart_mid_run_loses_no_usage_record(lab: dict[str, Any]) -> None:
    name = f"ha-store-{int(time.time())}"
    key = new_key(lab, name)
    stop, out = threading.Event(), {"completed": [], "failed": []}
    sender = threading.Thread(target=steady_client, args=(lab, key, stop, out))
    sender.start()
    try:
        time.sleep(3)
        started = time.monotonic()
        on_node(lab, "ctrl", "systemctl restart postgresql@15-main")
        restart_s = time.monotonic() - started
        time.sleep(6)
    finally:
        stop.set()
        sender.join(timeout=120)
    rows = stored_eventually(lab, name, set(out["completed"]), within=60)
    missing = set(out["completed"]) - {r["id"] for r in rows}
    figures = {"restart_s": round(restart_s, 2), "requests_completed": len(out["completed"]),
               "requests_failed": len(out["failed"]), "records": len(rows), "records_missing": len(missing)}
    record("postgresql_restart", figures)
    assert len(out["completed"]) > 5 and not missing, f"usage records lost across a PostgreSQL restart: {figures}"


def test_a_second_up_changes_nothing(lab: dict[str, Any]) -> None:
    again = podium("up", lab["folder"], timeout=1200)
    assert again.returncode == 0, again.stderr[-3000:]
    assert again.stdout.strip().endswith("changes: 0"), again.stdout[-2000:]
