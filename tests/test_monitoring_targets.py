"""Scrape targets and the rendered prometheus.yml, checked by promtool."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from podium.errors import InvalidInput
from podium.monitoring.rules import render_alert_rules
from podium.monitoring.scrape import render_prometheus_config
from podium.monitoring.targets import (
    EngineEndpoint,
    GatewayEndpoint,
    ScrapeTarget,
    targets_from_components,
)

PROMTOOL = shutil.which("promtool")


def appliance_targets() -> list[ScrapeTarget]:
    return targets_from_components(
        {"n1": "10.77.0.11", "n2": "10.77.0.12"},
        gpu_nodes=["n2"],
        engines=[
            EngineEndpoint(
                "engine-llamacpp", "n1", "10.77.0.11", 8080, "tiny-llama-cpp", "tiny-llama", "0"
            ),
            EngineEndpoint(
                "engine-predictive", "n1", "10.77.0.11", 8082, "iris-mlserver", "iris", "0"
            ),
            EngineEndpoint("engine-vllm", "n2", "10.77.0.12", 8000, "qwen-vllm", "qwen", "0"),
        ],
        gateways=[GatewayEndpoint("n1", "10.77.0.11", 8443, "0")],
        registry=("n1", "10.77.0.11"),
        prometheus=("n1", "10.77.0.11"),
    )


def test_targets_from_components_covers_every_endpoint_with_its_labels() -> None:
    by_job: dict[str, list[ScrapeTarget]] = {}
    for t in appliance_targets():
        by_job.setdefault(t.job, []).append(t)
    assert [t.address for t in by_job["node"]] == ["10.77.0.11:9100", "10.77.0.12:9100"]
    assert [t.address for t in by_job["dcgm"]] == ["10.77.0.12:9400"]
    assert [t.address for t in by_job["registry"]] == ["10.77.0.11:5001"]
    assert [t.address for t in by_job["engine-predictive"]] == ["10.77.0.11:8082"]
    llama = by_job["engine-llamacpp"][0]
    assert llama.all_labels() == {
        "node": "n1",
        "engine": "tiny-llama-cpp",
        "model": "tiny-llama",
        "replica": "0",
    }


def test_config_groups_targets_per_job_and_keeps_labels() -> None:
    text = render_prometheus_config(
        appliance_targets(),
        scrape_interval="10s",
        evaluation_interval="20s",
        rule_files=["/etc/prometheus/podium-alerts.yml"],
        alertmanager="10.77.0.11:9093",
        external_labels={"appliance": "lab"},
    )
    config = yaml.safe_load(text)
    assert config["global"] == {
        "scrape_interval": "10s",
        "evaluation_interval": "20s",
        "external_labels": {"appliance": "lab"},
    }
    assert config["rule_files"] == ["/etc/prometheus/podium-alerts.yml"]
    assert config["alerting"]["alertmanagers"][0]["static_configs"][0]["targets"] == [
        "10.77.0.11:9093"
    ]
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert list(jobs) == [
        "node",
        "engine-llamacpp",
        "engine-predictive",
        "engine-vllm",
        "gateway",
        "registry",
        "dcgm",
        "prometheus",
    ]
    assert jobs["node"]["static_configs"] == [
        {"targets": ["10.77.0.11:9100"], "labels": {"node": "n1"}},
        {"targets": ["10.77.0.12:9100"], "labels": {"node": "n2"}},
    ]
    assert jobs["engine-vllm"]["static_configs"][0]["labels"] == {
        "node": "n2",
        "engine": "qwen-vllm",
        "model": "qwen",
        "replica": "0",
    }
    # Rendering is deterministic, so an unchanged stack leaves the file unchanged.
    assert text == render_prometheus_config(
        appliance_targets(),
        scrape_interval="10s",
        evaluation_interval="20s",
        rule_files=["/etc/prometheus/podium-alerts.yml"],
        alertmanager="10.77.0.11:9093",
        external_labels={"appliance": "lab"},
    )


def test_https_targets_get_the_ca_file() -> None:
    targets = [
        ScrapeTarget("gateway", "n1", "gw.lab:8443", {"gateway_replica": "0"}, scheme="https")
    ]
    config = yaml.safe_load(render_prometheus_config(targets, ca_file="/etc/podium/ca.pem"))
    job = config["scrape_configs"][0]
    assert job["scheme"] == "https"
    assert job["tls_config"] == {"ca_file": "/etc/podium/ca.pem"}


@pytest.mark.skipif(PROMTOOL is None, reason="promtool is not installed (apt-get install prometheus)")
def test_promtool_accepts_the_rendered_config_with_its_rule_file(tmp_path: Path) -> None:
    rules = tmp_path / "podium-alerts.yml"
    rules.write_text(render_alert_rules())
    ca = tmp_path / "ca.pem"
    ca.write_text("")  # check config only needs the file to exist
    targets = [
        *appliance_targets(),
        ScrapeTarget("registry", "n3", "10.77.0.13:5001", scheme="http"),
    ]
    config = tmp_path / "prometheus.yml"
    config.write_text(
        render_prometheus_config(
            targets, rule_files=[str(rules)], alertmanager="10.77.0.11:9093", ca_file=str(ca)
        )
    )
    done = subprocess.run(
        [str(PROMTOOL), "check", "config", str(config)], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "10 rules found" in done.stdout + done.stderr


@pytest.mark.skipif(PROMTOOL is None, reason="promtool is not installed (apt-get install prometheus)")
def test_promtool_rejects_a_config_whose_rule_file_is_missing(tmp_path: Path) -> None:
    config = tmp_path / "prometheus.yml"
    config.write_text(
        render_prometheus_config(appliance_targets(), rule_files=[str(tmp_path / "none.yml")])
    )
    done = subprocess.run(
        [str(PROMTOOL), "check", "config", str(config)], capture_output=True, text=True
    )
    assert done.returncode != 0


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [
        ({"job": "nginx"}, "job 'nginx' is unknown"),
        ({"address": "10.77.0.11"}, "is not HOST:PORT"),
        ({"address": "10.77.0.11:99999"}, "is not HOST:PORT"),
        ({"scheme": "ftp"}, "scheme 'ftp'"),
        ({"metrics_path": "metrics"}, "must start with /"),
        ({"labels": {"node": "x"}}, "label 'node'"),
        ({"labels": {"__name__": "x"}}, "label '__name__'"),
        ({"labels": {"model-name": "x"}}, "label 'model-name'"),
        ({"host": ""}, "empty host"),
    ],
)
def test_bad_targets_are_refused_with_the_field_and_value(
    kwargs: dict[str, object], words: str
) -> None:
    fields: dict[str, object] = {"job": "node", "host": "n1", "address": "10.77.0.11:9100"}
    fields.update(kwargs)
    with pytest.raises(InvalidInput, match=words):
        ScrapeTarget(**fields)  # type: ignore[arg-type]


def test_bad_config_inputs_are_refused() -> None:
    node = [ScrapeTarget("node", "n1", "10.77.0.11:9100")]
    with pytest.raises(InvalidInput, match="scrape_interval '15'"):
        render_prometheus_config(node, scrape_interval="15")
    with pytest.raises(InvalidInput, match="alertmanager 'http://x'"):
        render_prometheus_config(node, alertmanager="http://x")
    with pytest.raises(InvalidInput, match="lists address 10.77.0.11:9100 twice"):
        render_prometheus_config(node * 2)
    mixed = [*node, ScrapeTarget("node", "n2", "10.77.0.12:9100", scheme="https")]
    with pytest.raises(InvalidInput, match="job node mixes"):
        render_prometheus_config(mixed)
    with pytest.raises(InvalidInput, match="gpu_nodes names n9"):
        targets_from_components({"n1": "10.77.0.11"}, gpu_nodes=["n9"])
