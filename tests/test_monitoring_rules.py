"""Alert rules: promtool checks them and runs its unit tests, firing and quiet cases alike."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from podium.errors import InvalidInput
from podium.monitoring.rules import (
    ALERTS,
    AlertThresholds,
    render_alert_rules,
    render_alertmanager_config,
)

PROMTOOL = shutil.which("promtool")
AMTOOL = shutil.which("amtool")
RULE_TESTS = Path(__file__).parent / "monitoring" / "podium-alerts.test.yml"
needs_promtool = pytest.mark.skipif(PROMTOOL is None, reason="promtool is not installed (apt-get install prometheus)")


def promtool_test(tmp_path: Path, thresholds: AlertThresholds) -> subprocess.CompletedProcess[str]:
    (tmp_path / "podium-alerts.yml").write_text(render_alert_rules(thresholds))
    shutil.copy(RULE_TESTS, tmp_path / RULE_TESTS.name)
    return subprocess.run(
        [str(PROMTOOL), "test", "rules", str(tmp_path / RULE_TESTS.name)],
        capture_output=True,
        text=True,
    )


def rules_by_name(text: str) -> dict[str, dict[str, object]]:
    return {r["alert"]: r for g in yaml.safe_load(text)["groups"] for r in g["rules"]}


@needs_promtool
def test_promtool_checks_the_rules(tmp_path: Path) -> None:
    path = tmp_path / "podium-alerts.yml"
    path.write_text(render_alert_rules())
    done = subprocess.run(
        [str(PROMTOOL), "check", "rules", str(path)], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"{len(ALERTS)} rules found" in done.stdout


def test_every_alert_is_rendered_once_and_has_a_unit_test() -> None:
    rendered = rules_by_name(render_alert_rules())
    assert sorted(rendered) == sorted(ALERTS)
    tested = {
        case["alertname"]
        for test in yaml.safe_load(RULE_TESTS.read_text())["tests"]
        for case in test["alert_rule_test"]
    }
    assert tested == set(ALERTS)


@needs_promtool
def test_each_alert_fires_and_stays_quiet_where_it_should(tmp_path: Path) -> None:
    done = promtool_test(tmp_path, AlertThresholds())
    assert done.returncode == 0, done.stdout + done.stderr


@needs_promtool
def test_the_stack_thresholds_reach_the_rules(tmp_path: Path) -> None:
    # With a looser 5xx ratio and SLO the 9 % errors and 4.9 s TTFT no longer fire,
    # so promtool's expectations fail for exactly those two alerts.
    done = promtool_test(tmp_path, AlertThresholds(gateway_5xx_ratio=0.1, ttft_slo_seconds=5))
    assert done.returncode != 0
    failed = done.stdout + done.stderr
    assert "alertname: Gateway5xxRatioHigh" in failed
    assert "alertname: TTFTp95AboveSLO" in failed
    assert "alertname: NodeDown" not in failed


def test_thresholds_and_waits_are_rendered() -> None:
    rules = rules_by_name(
        render_alert_rules(
            AlertThresholds(ttft_slo_seconds=1.5, gateway_5xx_ratio=0.02, rate_window="2m")
        )
    )
    assert "> 1.5" in str(rules["TTFTp95AboveSLO"]["expr"])
    assert "[2m]" in str(rules["TTFTp95AboveSLO"]["expr"])
    assert "> 0.02" in str(rules["Gateway5xxRatioHigh"]["expr"])
    assert rules["TTFTp95AboveSLO"]["for"] == "5m"
    short = rules_by_name(render_alert_rules(AlertThresholds().with_for("30s")))
    assert {name: r.get("for") for name, r in short.items()} == {
        name: (None if name == "GPUXidErrors" else "30s") for name in ALERTS
    }


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [
        ({"ttft_slo_seconds": 0}, "ttft_slo_seconds 0 must be above 0"),
        ({"gateway_5xx_ratio": 5}, "gateway_5xx_ratio 5 must be a fraction"),
        ({"disk_used_ratio": 85}, "disk_used_ratio 85 must be a fraction"),
        ({"ttft_for": "5 minutes"}, "ttft_for '5 minutes' is not a Prometheus duration"),
        ({"rate_window": ""}, "rate_window '' is not a Prometheus duration"),
    ],
)
def test_bad_thresholds_name_the_field(kwargs: dict[str, object], words: str) -> None:
    with pytest.raises(InvalidInput, match=words):
        AlertThresholds(**kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize("webhook", [None, "http://127.0.0.1:9095/alerts"])
def test_alertmanager_config_is_valid(tmp_path: Path, webhook: str | None) -> None:
    text = render_alertmanager_config(webhook)
    config = yaml.safe_load(text)
    receivers = [r["name"] for r in config["receivers"]]
    assert config["route"]["receiver"] in receivers
    assert ("webhook_configs" in config["receivers"][0]) == (webhook is not None)
    if AMTOOL is None:
        pytest.skip("amtool is not installed, so the YAML was checked but not Alertmanager's own"
                    " parse (apt-get install prometheus-alertmanager)")
    path = tmp_path / "alertmanager.yml"
    path.write_text(text)
    done = subprocess.run([AMTOOL, "check-config", str(path)], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


def test_alertmanager_config_refuses_a_bad_webhook() -> None:
    with pytest.raises(InvalidInput, match="webhook_url 'mailto:x'"):
        render_alertmanager_config("mailto:x")
