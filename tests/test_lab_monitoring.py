"""The monitoring role on real lab machines (tests/stacks/labmon): it comes up and verifies,
scrapes every target, keeps node exporters closed to all but the monitoring node, changes
nothing on a second apply, and a stopped node exporter becomes a NodeDown alert that reaches
Prometheus, Alertmanager's webhook and `podium status`."""

from __future__ import annotations

import json
import socket
import subprocess
import threading
import time
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from podium.render import REPO
from podium.stack import load_stack
from podium.stack.model import Stack
from tests.fixtures_lab import podium, require_lab_host

pytestmark = pytest.mark.lab

STACK = REPO / "tests" / "stacks" / "labmon"
PROMETHEUS = "http://10.77.13.10:9090"
WEBHOOK = ("10.77.13.1", 19093)  # the lab host's address on the lab bridge, see stack.yaml



def get(path: str) -> Any:
    with urllib.request.urlopen(f"{PROMETHEUS}{path}", timeout=5) as response:
        return json.load(response)["data"]


def on_node(name: str, command: str) -> subprocess.CompletedProcess[str]:
    return podium("lab", "ssh", name, "--stack", str(STACK), "--", command, timeout=60)


class Webhook:
    """Alertmanager's receiver: keeps every JSON body POSTed to it."""

    def __init__(self, address: tuple[str, int]) -> None:
        received: list[dict[str, Any]] = []

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                received.append(json.loads(body))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.received = received
        self.server = ThreadingHTTPServer(address, Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def labmon() -> Iterator[tuple[Stack, subprocess.CompletedProcess[str], float]]:
    """The labmon lab, up and verified; removed afterwards whatever happened."""
    require_lab_host()
    stack = load_stack(STACK)
    start = time.monotonic()
    try:
        done = podium("lab", "up", str(STACK), timeout=900)
        yield stack, done, time.monotonic() - start
    finally:
        podium("lab", "down", str(STACK), timeout=300)


@pytest.fixture(scope="module")
def webhook(labmon: Any) -> Iterator[Webhook]:
    # The lab bridge holds the address only while the lab is up.
    receiver = Webhook(WEBHOOK)
    try:
        yield receiver
    finally:
        receiver.close()


def test_010_lab_comes_up_and_podium_verify_passes(labmon: Any) -> None:
    _, done, took = labmon
    assert done.returncode == 0, f"podium lab up failed:\n{done.stdout[-3000:]}\n{done.stderr[-5000:]}"
    for host in ("ctrl", "node1"):
        assert f"✓ verify monitoring on {host}" in done.stderr, done.stderr[-3000:]
    print(f"lab up + podium up + verify: {took:.0f} s")


def test_020_every_scrape_target_is_up(labmon: Any) -> None:
    expected = {
        ("node", "10.77.13.10:9100"),
        ("node", "10.77.13.11:9100"),
        ("prometheus", "10.77.13.10:9090"),
    }
    deadline = time.monotonic() + 30
    while True:
        active = get("/api/v1/targets?state=active")["activeTargets"]
        health = {(t["labels"]["job"], t["labels"]["instance"]): t["health"] for t in active}
        if all(h == "up" for h in health.values()) or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert set(health) == expected
    down = sorted(k for k, h in health.items() if h != "up")
    assert not down, f"targets not up: {down}"


def test_030_node_exporters_are_closed_to_all_but_the_monitoring_node(labmon: Any) -> None:
    # This computer is the lab's admin source: it reaches Prometheus, not the exporters.
    with socket.create_connection(("10.77.13.10", 9090), timeout=3):
        pass
    for address in ("10.77.13.10", "10.77.13.11"):
        with pytest.raises(OSError), socket.create_connection((address, 9100), timeout=2):
            pass
    from_node1 = on_node("node1", "timeout 2 bash -c '</dev/tcp/10.77.13.10/9100'")
    assert from_node1.returncode != 0, "node1 reaches ctrl's node exporter"
    from_ctrl = on_node("ctrl", "timeout 2 bash -c '</dev/tcp/10.77.13.11/9100'")
    assert from_ctrl.returncode == 0, f"ctrl cannot reach node1's node exporter: {from_ctrl.stderr}"


def test_040_a_second_apply_changes_nothing(labmon: Any) -> None:
    done = podium("up", str(STACK), "--only", "monitoring", "--reapply", timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "monitoring: changed 0" in done.stderr, done.stderr[-3000:]


def test_050_a_stopped_node_exporter_fires_node_down_everywhere(labmon: Any, webhook: Webhook) -> None:
    stop = on_node("node1", "systemctl stop prometheus-node-exporter")
    assert stop.returncode == 0, stop.stderr
    try:
        start = time.monotonic()
        firing: list[dict[str, Any]] = []
        # alert_for is 10s and scrapes every 2s: firing within a minute or it is broken.
        while not firing and time.monotonic() - start < 60:
            alerts = get("/api/v1/alerts")["alerts"]
            firing = [
                a
                for a in alerts
                if a["labels"]["alertname"] == "NodeDown"
                and a["labels"]["node"] == "node1"
                and a["state"] == "firing"
            ]
            time.sleep(1)
        fired_after = time.monotonic() - start
        assert firing, f"NodeDown for node1 did not fire within 60 s; alerts: {alerts}"
        others = [a for a in alerts if a["labels"].get("node") == "ctrl"]
        assert not others, f"alerts for the healthy ctrl: {others}"

        # Alertmanager groups for at most alert_for (10s) before posting to the webhook.
        while time.monotonic() - start < 90 and not _node_down_posted(webhook):
            time.sleep(1)
        posted_after = time.monotonic() - start
        assert _node_down_posted(webhook), f"webhook got no NodeDown for node1: {webhook.received}"

        status = podium("status", str(STACK), "--json", timeout=120)
        assert status.returncode == 0, status.stderr
        shown = json.loads(status.stdout)
        nodes = {n["node"]: n["up"] for n in shown["nodes"]}
        assert nodes == {"ctrl": True, "node1": False}, nodes
        assert shown["prometheus"] == PROMETHEUS
        for host in ("ctrl", "node1"):
            assert shown["versions"][host]["monitoring"] == "2.42.0+ds-5+deb12u1", shown["versions"]
        print(f"NodeDown firing after {fired_after:.0f} s, at the webhook after {posted_after:.0f} s")
    finally:
        on_node("node1", "systemctl start prometheus-node-exporter")


def _node_down_posted(webhook: Webhook) -> bool:
    return any(
        alert["labels"].get("alertname") == "NodeDown"
        and alert["labels"].get("node") == "node1"
        and alert["status"] == "firing"
        and alert["labels"].get("appliance") == "labmon"
        for body in webhook.received
        for alert in body.get("alerts", [])
    )
