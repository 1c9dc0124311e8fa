"""Role monitoring, proved on each host: the node exporter answers, only the monitoring node
reaches it, and on the monitoring node Prometheus is ready with the stack's retention, scrapes
every target it was given, has Podium's rules loaded and talks to a ready Alertmanager; Grafana,
where the stack has it, serves the dashboards and calls nobody."""

import json
import shlex
import time

from podium.monitoring.role_files import GRAFANA_QUIET, seconds

PODIUM_GROUPS = {"podium-nodes", "podium-gpus", "podium-serving"}


def _get(host, url):
    """GET `url` from the host itself (curl, installed by base) and parse the JSON answer."""
    return json.loads(host.check_output(f"curl -sf --max-time 5 {shlex.quote(url)}"))


def _prometheus(settings):
    # Asked over loopback: the firewall opens Prometheus' port only to admins and gateways.
    return f"http://127.0.0.1:{settings['port']}"


def _reaches(peer, address, port):
    return peer.run(f"timeout 2 bash -c {shlex.quote(f'</dev/tcp/{address}/{port}')}").rc == 0


def test_010_node_exporter_answers(host):
    result = host.run("curl -sf --max-time 5 http://127.0.0.1:9100/metrics")
    assert result.rc == 0, f"node exporter on {host.check_output('hostname')} does not answer on :9100"
    assert "node_exporter_build_info" in result.stdout
    assert host.service("prometheus-node-exporter").is_enabled


def test_020_node_exporter_reachable_only_from_the_monitoring_node(host, settings, node, stack):
    name = host.check_output("hostname")
    address = str(stack.node(name).address)
    monitor = settings["node"]
    # From the monitoring node itself too, so a closed port elsewhere means the firewall.
    assert _reaches(node(monitor), address, 9100), f"{monitor} cannot reach {name}'s node exporter"
    for peer in stack.node_names:
        if peer not in (name, monitor):
            assert not _reaches(node(peer), address, 9100), (
                f"{peer} reaches {name}'s node exporter; only {monitor} should"
            )


def test_030_dcgm_exporter_runs_on_gpu_nodes(host, settings):
    if not settings["gpu"] or not settings["artifact_mirror"]:
        return
    assert host.service("podium-dcgm-exporter").is_running, "DCGM exporter is not running"
    metrics = host.check_output("curl -sf --max-time 5 http://127.0.0.1:9400/metrics")
    assert "DCGM_FI_DEV_FB_USED" in metrics


def test_040_prometheus_is_ready_with_the_stacks_retention(host, settings):
    if not settings["server"]:
        return
    ready = host.run(f"curl -sf --max-time 5 {_prometheus(settings)}/-/ready")
    assert ready.rc == 0, f"Prometheus is not ready on :{settings['port']}"
    flags = _get(host, f"{_prometheus(settings)}/api/v1/status/flags")["data"]
    assert flags["storage.tsdb.retention.time"] == settings["retention"], flags


def test_050_every_scrape_target_is_up(host, settings):
    if not settings["server"]:
        return
    expected = {(t["job"], t["address"]) for t in settings["targets"]}
    # A target is `unknown` until its first scrape: wait a few scrape intervals, bounded.
    wait = max(30, 4 * seconds("scrape_interval", settings["scrape_interval"]))
    deadline = time.monotonic() + wait
    while True:
        active = _get(host, f"{_prometheus(settings)}/api/v1/targets?state=active")["data"]
        targets = {(t["labels"]["job"], t["labels"]["instance"]): t for t in active["activeTargets"]}
        down = {k: t for k, t in targets.items() if t["health"] != "up"}
        if (not down and expected <= set(targets)) or time.monotonic() > deadline:
            break
        time.sleep(1)
    missing = sorted(expected - set(targets))
    assert not missing, f"Prometheus does not scrape {', '.join(f'{j} {a}' for j, a in missing)}"
    assert not down, "scrape targets down: " + "; ".join(
        f"{job} {address} on {t['labels'].get('node', '?')} "
        f"({t['health']}: {t['lastError'] or 'no scrape yet'})"
        for (job, address), t in sorted(down.items())
    )


def test_060_podium_rules_are_loaded(host, settings):
    if not settings["server"]:
        return
    groups = _get(host, f"{_prometheus(settings)}/api/v1/rules")["data"]["groups"]
    loaded = {g["name"] for g in groups}
    assert loaded >= PODIUM_GROUPS, f"rule groups missing: {sorted(PODIUM_GROUPS - loaded)}"
    bad = [r["name"] for g in groups for r in g["rules"] if r.get("health") == "err"]
    assert not bad, f"rules failing to evaluate: {bad}"


def test_070_alertmanager_is_ready_and_known_to_prometheus(host, settings):
    if not settings["server"]:
        return
    port = settings["alertmanager_port"]
    assert host.run(f"curl -sf --max-time 5 http://127.0.0.1:{port}/-/ready").rc == 0, (
        f"Alertmanager is not ready on :{port}"
    )
    status = _get(host, f"http://127.0.0.1:{port}/api/v2/status")
    config = status["config"]["original"]
    if settings["webhook"]:
        assert settings["webhook"] in config, "Alertmanager does not send to the stack's webhook"
    managers = _get(host, f"{_prometheus(settings)}/api/v1/alertmanagers")["data"]
    urls = [m["url"] for m in managers["activeAlertmanagers"]]
    assert any(f":{port}/" in u for u in urls), f"Prometheus sends alerts to no Alertmanager: {urls}"


def test_080_grafana_serves_the_podium_dashboards(host, settings):
    if not settings["server"] or not settings["grafana_repository"]:
        return
    assert host.service("grafana-server").is_running, "Grafana is not running"
    health = host.run("curl -sf --max-time 5 http://127.0.0.1:3000/api/health")
    assert health.rc == 0, "Grafana does not answer on :3000"


def test_090_grafana_calls_nobody(host, settings):
    """Grafana runs with every setting that would call out switched off."""
    if not settings["server"] or not settings["grafana_repository"]:
        return
    env = host.check_output("systemctl show -p Environment --value grafana-server").split()
    missing = [f"{k}={v}" for k, v in GRAFANA_QUIET.items() if f"{k}={v}" not in env]
    assert not missing, f"grafana-server runs without {', '.join(missing)}"
