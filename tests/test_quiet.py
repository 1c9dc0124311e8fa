"""Private by default after install: every engine's systemd unit and Kubernetes pod carry the same
quiet environment, Grafana's settings that would call out are off and its dashboards need no
plugin fetched at runtime, and the base role's reading of apt's timers."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml
from roles.base.defaults import APT_TIMERS
from roles.base.tasks import unit_states

from podium.cluster import build_objects
from podium.engine_files import QUIET_ENV
from podium.files import files_for
from podium.monitoring import role_files as rf
from podium.plan.actions import make_plan
from podium.stack import load_stack
from podium.stack.model import Stack
from podium.stack.versions import load_versions
from tests.fixtures_cluster import CLUSTER_STACK

KINDS = {"llamacpp", "vllm", "sglang", "predictive"}
# What the appliance promises at the least, whatever else an engine honours.
PROMISED = {"VLLM_NO_USAGE_STATS": "1", "DO_NOT_TRACK": "1", "HF_HUB_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
# Panel and data source plugins every Grafana release ships built in.
BUILT_IN_PANELS = {"timeseries", "stat", "table", "row", "gauge", "bargauge", "text", "heatmap"}
BUILT_IN_SOURCES = {"prometheus", "datasource"}


def _stack(tmp_path: Path, on_cluster: bool) -> Stack:
    """Every engine kind, on the cluster or laid down on hosts as systemd units."""
    data = yaml.safe_load(CLUSTER_STACK)
    if not on_cluster:
        data["kubernetes"]["engines"] = []
    folder = tmp_path / ("cluster" if on_cluster else "hosts")
    folder.mkdir()
    (folder / "stack.yaml").write_text(yaml.safe_dump(data), encoding="utf-8")
    return load_stack(folder)


def _unit_envs(stack: Stack) -> dict[str, dict[str, str]]:
    """unit → its Environment= settings, for every engine unit the plan lays down."""
    out = {}
    for action in make_plan(stack, load_versions()):
        if not action.component.startswith("engine-"):
            continue
        for path, text in files_for(action.component, action.host, action.settings).items():
            if path.endswith(".service"):
                pairs = [line.removeprefix("Environment=").strip('"').split("=", 1)
                         for line in text.splitlines() if line.startswith("Environment=")]
                out[f"{action.host}:{path}"] = dict(pairs)
    return out


def _pod_envs(stack: Stack) -> dict[str, dict[str, Any]]:
    """Deployment → its engine container's env, for every engine on the cluster."""
    out = {}
    for obj in build_objects(stack, load_versions()):
        if obj["kind"] == "Deployment" and obj["metadata"]["labels"]["podium.io/component"].startswith("engine-"):
            [container] = obj["spec"]["template"]["spec"]["containers"]
            out[obj["metadata"]["name"]] = {e["name"]: e.get("value") for e in container["env"]}
    return out


def test_every_engine_unit_and_pod_carries_the_same_quiet_environment(tmp_path: Path) -> None:
    assert PROMISED.items() <= QUIET_ENV.items()
    units = _unit_envs(_stack(tmp_path, on_cluster=False))
    pods = _pod_envs(_stack(tmp_path, on_cluster=True))
    kinds = {name.split("podium-", 1)[1].split("-", 1)[0] for name in units}
    assert kinds == KINDS, f"every engine kind is rendered as a unit: {kinds}"
    assert len(pods) == len(units) == 7, "every replica of the stack's 4 engines, once as unit, once as pod"
    for where, env in [*units.items(), *pods.items()]:
        quiet = {k: v for k, v in env.items() if k in QUIET_ENV}
        assert quiet == QUIET_ENV, f"{where} runs without {set(QUIET_ENV.items()) - set(quiet.items())}"


def test_grafana_runs_with_everything_that_calls_out_switched_off(tmp_path: Path) -> None:
    data = yaml.safe_load((Path("stacks") / "lab" / "stack.yaml").read_text(encoding="utf-8"))
    data["monitoring"]["grafana_repository"] = "https://mirror.example.internal/grafana"
    (tmp_path / "stack.yaml").write_text(yaml.safe_dump(data), encoding="utf-8")
    action = next(a for a in make_plan(load_stack(tmp_path), load_versions())
                  if a.component == "monitoring" and a.settings["server"])
    dropin = files_for("monitoring", action.host, action.settings)[rf.GRAFANA_DROPIN]
    env = dict(line.removeprefix("Environment=").split("=", 1)
               for line in dropin.splitlines() if line.startswith("Environment="))
    for key, value in {
        "GF_ANALYTICS_REPORTING_ENABLED": "false",
        "GF_ANALYTICS_CHECK_FOR_UPDATES": "false",
        "GF_ANALYTICS_CHECK_FOR_PLUGIN_UPDATES": "false",
        "GF_NEWS_NEWS_FEED_ENABLED": "false",
        "GF_SECURITY_DISABLE_GRAVATAR": "true",
        "GF_PLUGINS_PREINSTALL_DISABLED": "true",
        "GF_PLUGINS_PLUGIN_ADMIN_ENABLED": "false",
        "GF_PLUGINS_PUBLIC_KEY_RETRIEVAL_DISABLED": "true",
        "GF_SNAPSHOTS_EXTERNAL_ENABLED": "false",
    }.items():
        assert env.get(key) == value, f"Grafana's drop-in sets {key}={env.get(key)}, not {value}"
    assert rf.GRAFANA_QUIET.items() <= env.items()


def test_grafanas_dashboards_need_no_plugin_fetched_at_runtime() -> None:
    """Every panel and data source type the dashboards use ships with Grafana itself."""
    panels, sources = set(), set()
    for path in sorted(Path("templates/monitoring/dashboards").glob("*.json")):
        dashboard = json.loads(path.read_text(encoding="utf-8"))
        for panel in dashboard["panels"]:
            panels.add(panel["type"])
            for target in panel.get("targets", []):
                sources.add(target.get("datasource", {}).get("type", "prometheus"))
            if "datasource" in panel:
                sources.add(panel["datasource"]["type"])
        for variable in dashboard.get("templating", {}).get("list", []):
            if "datasource" in variable and isinstance(variable["datasource"], dict):
                sources.add(variable["datasource"]["type"])
    assert panels and panels <= BUILT_IN_PANELS, f"panels not built into Grafana: {panels - BUILT_IN_PANELS}"
    assert sources <= BUILT_IN_SOURCES, f"data sources not built into Grafana: {sources - BUILT_IN_SOURCES}"


def test_apt_timer_states_read_as_systemctl_prints_them() -> None:
    # `echo <unit> $(systemctl is-enabled <unit>)` on a fresh Debian 12 node without
    # unattended-upgrades, then after the role masked them.
    fresh = "apt-daily.timer enabled\napt-daily-upgrade.timer enabled\nunattended-upgrades.service\n"
    assert unit_states(fresh) == {"apt-daily.timer": "enabled", "apt-daily-upgrade.timer": "enabled"}
    masked = "".join(f"{u} masked\n" for u in APT_TIMERS)
    assert unit_states(masked) == dict.fromkeys(APT_TIMERS, "masked")
