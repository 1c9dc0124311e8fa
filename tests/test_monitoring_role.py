"""The monitoring role's files: rendered by `podium render` for every example stack, checked by
promtool and amtool, and holding the stack's targets, thresholds, retention and webhook."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from podium.errors import InvalidInput
from podium.files import files_for
from podium.monitoring import role_files as rf
from podium.plan.actions import make_plan
from podium.plan.components import BY_NAME
from podium.render import REPO
from podium.stack import load_stack
from podium.stack.model import Stack
from podium.stack.versions import load_versions

PROMTOOL = shutil.which("promtool")
AMTOOL = shutil.which("amtool")
EXAMPLES = ("lab", "single-gpu", "hybrid")
SERVER = {"lab": "ctrl", "single-gpu": "gpu1", "hybrid": "vm-ctrl"}
LLAMA = {"engine": "tiny-llama-cpp", "model": "tiny-llama"}


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Path]:
    """stack name → folder `podium render stacks/<name> --out` wrote (rendered once each)."""
    cache: dict[str, Path] = {}

    def render(name: str) -> Path:
        if name not in cache:
            out = tmp_path_factory.mktemp(f"render-{name}")
            done = subprocess.run(
                [sys.executable, "-m", "podium", "render", str(REPO / "stacks" / name), "--out", str(out)],
                capture_output=True,
                text=True,
                cwd=REPO,
            )
            assert done.returncode == 0, f"podium render stacks/{name} failed: {done.stderr[-2000:]}"
            cache[name] = out
        return cache[name]

    return render


def settings_of(stack: Stack, host: str) -> dict[str, Any]:
    return BY_NAME["monitoring"].settings(stack, host)


def stack_with(tmp_path: Path, name: str, **monitoring: Any) -> Stack:
    """stacks/<name> with its monitoring section changed, loaded from a copy."""
    data = yaml.safe_load((REPO / "stacks" / name / "stack.yaml").read_text())
    data["monitoring"].update(monitoring)
    path = tmp_path / "stack.yaml"
    path.write_text(yaml.safe_dump(data))
    return load_stack(path)


@pytest.mark.skipif(PROMTOOL is None, reason="promtool is not installed (apt-get install prometheus)")
@pytest.mark.parametrize("name", EXAMPLES)
def test_promtool_accepts_the_rendered_config_of_every_example_stack(
    rendered: Callable[[str], Path], name: str
) -> None:
    config = rendered(name) / SERVER[name] / "monitoring" / rf.PROMETHEUS_CONFIG
    assert config.is_file(), f"podium render wrote no {rf.PROMETHEUS_CONFIG} for {name}"
    done = subprocess.run(
        [str(PROMTOOL), "check", "config", str(config)], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stdout + done.stderr
    # The rules file is named relative to the config, so promtool checked it too.
    assert "SUCCESS: 10 rules found" in done.stdout, done.stdout


@pytest.mark.skipif(AMTOOL is None, reason="amtool is not installed (apt-get install prometheus-alertmanager)")
@pytest.mark.parametrize("name", EXAMPLES)
def test_amtool_accepts_the_rendered_alertmanager_config(
    rendered: Callable[[str], Path], name: str
) -> None:
    config = rendered(name) / SERVER[name] / "monitoring" / rf.ALERTMANAGER_CONFIG
    done = subprocess.run(
        [str(AMTOOL), "check-config", str(config)], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_only_the_monitoring_node_gets_prometheus(rendered: Callable[[str], Path]) -> None:
    root = rendered("lab")
    for node in ("ctrl", "node1", "node2"):
        folder = root / node / "monitoring"
        files = {str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()}
        assert rf.NODE_EXPORTER_DEFAULTS in files, f"{node} has no node exporter flags"
        assert (rf.PROMETHEUS_CONFIG in files) == (node == "ctrl"), f"{node}: {sorted(files)}"


def _jobs(config_text: str) -> dict[str, list[tuple[str, dict[str, str]]]]:
    config = yaml.safe_load(config_text)
    return {
        job["job_name"]: [
            (target, group["labels"]) for group in job["static_configs"] for target in group["targets"]
        ]
        for job in config["scrape_configs"]
    }


def test_lab_scrape_config_covers_every_exporter_engine_replica_gateway_and_registry() -> None:
    stack = load_stack(REPO / "stacks" / "lab")
    config = files_for("monitoring", "ctrl", settings_of(stack, "ctrl"))[rf.PROMETHEUS_CONFIG]
    jobs = _jobs(config)
    assert jobs["node"] == [
        ("10.77.0.10:9100", {"node": "ctrl"}),
        ("10.77.0.11:9100", {"node": "node1"}),
        ("10.77.0.12:9100", {"node": "node2"}),
    ]
    # llama.cpp on its API port, one target per replica, round-robin over the engine's nodes;
    # the embedding model's engine beside it on node1.
    assert jobs["engine-llamacpp"] == [
        ("10.77.0.11:8080", {**LLAMA, "node": "node1", "replica": "0"}),
        ("10.77.0.12:8080", {**LLAMA, "node": "node2", "replica": "1"}),
        ("10.77.0.11:8086", {"engine": "tiny-embed-cpp", "model": "tiny-embed", "node": "node1",
                             "replica": "0"}),
    ]
    # MLServer on the replica's own metrics port (API 8090, gRPC 8091, metrics 8092; the ONNX
    # model's replica 8093-8095).
    assert jobs["engine-predictive"] == [
        ("10.77.0.12:8092", {"engine": "iris-predictive", "model": "iris", "node": "node2", "replica": "0"}),
        ("10.77.0.12:8095", {"engine": "digits-predictive", "model": "digits", "node": "node2", "replica": "0"}),
    ]
    # The gateway's metrics listener, the port after its API (8443), not the API itself.
    assert jobs["gateway"] == [("10.77.0.10:8444", {"gateway_replica": "0", "node": "ctrl"})]
    assert jobs["registry"] == [("10.77.0.10:5001", {"node": "ctrl"})]
    assert jobs["prometheus"] == [("10.77.0.10:9090", {"node": "ctrl"})]
    assert "dcgm" not in jobs, "the lab has no GPU node"
    gateway = next(j for j in yaml.safe_load(config)["scrape_configs"] if j["job_name"] == "gateway")
    assert gateway["scheme"] == "https", "the lab's gateway serves TLS"
    assert gateway["tls_config"] == {"ca_file": rf.CA_BUNDLE}
    parsed = yaml.safe_load(config)
    assert parsed["alerting"]["alertmanagers"][0]["static_configs"][0]["targets"] == ["10.77.0.10:9093"]
    assert parsed["global"]["scrape_interval"] == "5s"
    assert parsed["global"]["external_labels"] == {"appliance": "lab"}


def test_every_listener_a_target_names_is_opened_to_the_monitoring_node() -> None:
    """The firewall (ports.py) and the scrape targets must agree, or a target stays down."""
    from podium.stack.ports import listeners

    for name in EXAMPLES:
        stack = load_stack(REPO / "stacks" / name)
        assert stack.monitoring is not None
        open_to_monitoring = {
            (str(stack.node(item.node).address), item.port)
            for item in listeners(stack)
            if {"monitoring", "any"} & set(item.audience) or item.node == stack.monitoring.node
        }
        for target in settings_of(stack, stack.monitoring.node)["targets"]:
            if target["job"] == "dcgm":
                continue  # ports.py declares no DCGM exporter listener yet (9400 on GPU nodes)
            address, port = target["address"].rsplit(":", 1)
            assert (address, int(port)) in open_to_monitoring, (
                f"{name}: {target['job']} target {target['address']} is not opened to the monitoring node"
            )


def test_gpu_nodes_get_the_dcgm_exporter_and_a_dcgm_target() -> None:
    stack = load_stack(REPO / "stacks" / "single-gpu")
    files = files_for("monitoring", "gpu1", settings_of(stack, "gpu1"))
    unit = files[rf.DCGM_UNIT]
    assert f"ExecStart={rf.DCGM_BINARY} --address=:9400 --collectors=/{rf.DCGM_COUNTERS}" in unit
    counters = files[rf.DCGM_COUNTERS]
    # The fields Podium's GPU alerts read must be collected.
    for field in ("DCGM_FI_DEV_XID_ERRORS", "DCGM_FI_DEV_FB_USED", "DCGM_FI_DEV_FB_FREE"):
        assert f"{field}," in counters, field
    jobs = _jobs(files[rf.PROMETHEUS_CONFIG])
    assert jobs["dcgm"] == [("192.0.2.10:9400", {"node": "gpu1"})]
    assert [t for t, _ in jobs["engine-vllm"]] == ["192.0.2.10:8000"]
    assert [t for t, _ in jobs["engine-sglang"]] == ["192.0.2.10:30000"]
    lab = load_stack(REPO / "stacks" / "lab")
    assert rf.DCGM_UNIT not in files_for("monitoring", "node1", settings_of(lab, "node1"))


def test_hybrid_scrapes_host_engines_and_both_gateways_but_not_cluster_engines() -> None:
    stack = load_stack(REPO / "stacks" / "hybrid")
    jobs = _jobs(files_for("monitoring", "vm-ctrl", settings_of(stack, "vm-ctrl"))[rf.PROMETHEUS_CONFIG])
    assert [t for t, _ in jobs["engine-llamacpp"]] == ["198.51.100.10:8080"]
    # llama-8b-vllm and churn-predictive run on k3s, where the cluster layer reaches them.
    assert "engine-vllm" not in jobs and "engine-predictive" not in jobs
    assert [labels["gateway_replica"] for _, labels in jobs["gateway"]] == ["0", "1"]
    assert sorted(t for t, _ in jobs["dcgm"]) == ["203.0.113.11:9400", "203.0.113.12:9400"]


def test_retention_port_and_thresholds_come_from_the_stack(tmp_path: Path) -> None:
    stack = stack_with(
        tmp_path,
        "lab",
        retention="45d",
        port=9190,
        ttft_slo_seconds=0.75,
        alert_for="20s",
        scrape_interval="2m",
    )
    files = files_for("monitoring", "ctrl", settings_of(stack, "ctrl"))
    flags = files[rf.PROMETHEUS_DEFAULTS]
    assert "--storage.tsdb.retention.time=45d" in flags
    assert "--web.listen-address=:9190" in flags
    assert f"--config.file=/{rf.PROMETHEUS_CONFIG}" in flags
    rules = {r["alert"]: r for g in yaml.safe_load(files[rf.ALERT_RULES])["groups"] for r in g["rules"]}
    assert rules["NodeDown"]["for"] == "20s"
    assert rules["EngineReplicaDown"]["for"] == "20s"
    assert "> 0.75" in rules["TTFTp95AboveSLO"]["expr"]
    # rate() windows cover at least four 2m scrapes.
    assert "[480s]" in rules["TTFTp95AboveSLO"]["expr"]
    config = yaml.safe_load(files[rf.PROMETHEUS_CONFIG])
    assert config["scrape_configs"][-1]["static_configs"][0]["targets"] == ["10.77.0.10:9190"]


def test_alertmanager_sends_to_the_stacks_webhook(tmp_path: Path) -> None:
    stack = stack_with(tmp_path, "lab", webhook="https://chat.example.internal/hooks/podium")
    text = files_for("monitoring", "ctrl", settings_of(stack, "ctrl"))[rf.ALERTMANAGER_CONFIG]
    config = yaml.safe_load(text)
    assert config["route"]["receiver"] == "podium-webhook"
    assert config["receivers"][0]["webhook_configs"][0]["url"] == "https://chat.example.internal/hooks/podium"
    # The lab's 30s alert_for: alerts are grouped no longer than they waited to fire.
    assert config["route"]["group_wait"] == "30s"
    default = load_stack(REPO / "stacks" / "single-gpu")
    gpu1 = files_for("monitoring", "gpu1", settings_of(default, "gpu1"))
    assert yaml.safe_load(gpu1[rf.ALERTMANAGER_CONFIG])["route"]["receiver"] == "podium-null"
    flags = gpu1[rf.ALERTMANAGER_DEFAULTS]
    assert "--cluster.listen-address=" in flags and "--web.listen-address=:9093" in flags


def test_grafana_is_provisioned_only_with_a_repository(tmp_path: Path) -> None:
    lab = load_stack(REPO / "stacks" / "lab")
    plain = files_for("monitoring", "ctrl", settings_of(lab, "ctrl"))
    assert not any(p.startswith("etc/grafana") for p in plain)
    stack = stack_with(tmp_path, "lab", grafana_repository="https://mirror.example.internal/grafana")
    files = files_for("monitoring", "ctrl", settings_of(stack, "ctrl"))
    assert files[rf.GRAFANA_SOURCE].splitlines()[-1] == (
        f"deb [signed-by={rf.GRAFANA_KEYRING}] https://mirror.example.internal/grafana stable main"
    )
    source = yaml.safe_load(files[f"{rf.GRAFANA_PROVISIONING}/datasources/podium.yml"])
    assert source["datasources"][0]["url"] == "http://10.77.0.10:9090"
    assert source["datasources"][0]["jsonData"]["timeInterval"] == "5s"
    provider = yaml.safe_load(files[f"{rf.GRAFANA_PROVISIONING}/dashboards/podium.yml"])
    folder = provider["providers"][0]["options"]["path"]
    assert folder == f"/{rf.GRAFANA_DASHBOARDS}"
    dashboards = [p for p in files if p.startswith(rf.GRAFANA_DASHBOARDS)]
    assert len(dashboards) == 3
    for path in dashboards:
        panels = json.loads(files[path])["panels"]
        assert panels, f"{path} has no panels"
    assert "GF_ANALYTICS_REPORTING_ENABLED=false" in files[rf.GRAFANA_DROPIN]
    own_suite = stack_with(tmp_path, "lab", grafana_repository="http://10.0.0.5/grafana bookworm main")
    text = files_for("monitoring", "ctrl", settings_of(own_suite, "ctrl"))[rf.GRAFANA_SOURCE]
    assert text.rstrip().endswith("http://10.0.0.5/grafana bookworm main")


def test_a_grafana_repository_that_is_not_a_url_is_refused(tmp_path: Path) -> None:
    # Refused when the stack loads now, before any file is built.
    with pytest.raises(InvalidInput, match="monitoring.grafana_repository"):
        stack_with(tmp_path, "lab", grafana_repository="apt.grafana.com stable main")


def test_grafana_takes_its_admin_password_from_the_stack_secrets_and_admits_admins_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PODIUM_STATE_DIR", str(tmp_path / "state"))
    password = rf.grafana_admin_password("lab")
    secret = tmp_path / "state" / "lab" / "secrets" / rf.GRAFANA_SECRET
    assert len(password) >= 32 and rf.grafana_admin_password("lab") == password, "made once, then kept"
    assert secret.stat().st_mode & 0o777 == 0o600
    stack = stack_with(tmp_path, "lab", grafana_repository="https://mirror.example.internal/grafana")
    dropin = files_for("monitoring", "ctrl", settings_of(stack, "ctrl"))[rf.GRAFANA_DROPIN]
    env = dict(
        line.removeprefix("Environment=").split("=", 1)
        for line in dropin.splitlines()
        if line.startswith("Environment=")
    )
    assert env["GF_AUTH_ANONYMOUS_ENABLED"] == "false"
    assert env["GF_USERS_ALLOW_SIGN_UP"] == "false"
    assert env["GF_USERS_ALLOW_ORG_CREATE"] == "false"
    # The password itself is never in a unit (units are world-readable): Grafana reads a file.
    assert env["GF_SECURITY_ADMIN_PASSWORD__FILE"] == rf.GRAFANA_PASSWORD_FILE
    assert "GF_SECURITY_ADMIN_PASSWORD" not in env
    every_file = files_for("monitoring", "ctrl", settings_of(stack, "ctrl"))
    assert not [p for p, text in every_file.items() if password in text], "the password is in a rendered file"
    assert password not in json.dumps(settings_of(stack, "ctrl")), "the password is in the settings"
    tasks = (REPO / "roles" / "monitoring" / "tasks.py").read_text()
    assert "rf.grafana_admin_password(" in tasks and "--password-from-stdin" in tasks
    # Port 3000 opens to the stack's admin sources (the lab host), never to everyone.
    base = BY_NAME["base"].settings(stack, "ctrl")
    grafana = [o for o in base["openings"] if o["what"] == "grafana"]
    assert grafana == [{"port": rf.GRAFANA_PORT, "protocol": "tcp", "sources": ["10.77.0.1"], "what": "grafana"}]


def test_node_exporter_hosts_are_not_reconfigured_when_an_engine_moves(tmp_path: Path) -> None:
    data = yaml.safe_load((REPO / "stacks" / "lab" / "stack.yaml").read_text())
    before = load_stack(REPO / "stacks" / "lab")
    data["engines"][0]["port"] = 8180
    (tmp_path / "stack.yaml").write_text(yaml.safe_dump(data))
    after = load_stack(tmp_path / "stack.yaml")
    versions = load_versions()
    hashes = [
        {a.host: a.config_hash for a in make_plan(s, versions) if a.component == "monitoring"}
        for s in (before, after)
    ]
    assert hashes[0]["node1"] == hashes[1]["node1"]
    assert hashes[0]["ctrl"] != hashes[1]["ctrl"], "Prometheus' node must see the new port"


def test_status_takes_prometheus_from_the_stack_and_refuses_one_without_monitoring(tmp_path: Path) -> None:
    from podium.cli.status import stack_prometheus_url

    assert stack_prometheus_url(load_stack(REPO / "stacks" / "lab")) == "http://10.77.0.10:9090"
    data = yaml.safe_load((REPO / "tests" / "stacks" / "labmon" / "stack.yaml").read_text())
    del data["monitoring"]
    (tmp_path / "stack.yaml").write_text(yaml.safe_dump(data))
    done = subprocess.run(
        [sys.executable, "-m", "podium", "status", str(tmp_path)], capture_output=True, text=True
    )
    assert done.returncode == 2, done.stderr
    assert "declares no monitoring: section" in done.stderr
    assert "Traceback" not in done.stderr
    bare = subprocess.run([sys.executable, "-m", "podium", "status"], capture_output=True, text=True)
    assert bare.returncode == 2 and "--prometheus" in bare.stderr


def test_durations_in_seconds() -> None:
    assert rf.seconds("x", "1h30m") == 5400
    assert rf.seconds("x", "250ms") == 0.25
    with pytest.raises(InvalidInput, match="x '5 min' is not a Prometheus duration"):
        rf.seconds("x", "5 min")
