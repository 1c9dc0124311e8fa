"""The k3s role rendered and checked without k3s (no download of k3s is possible here): its
settings from the version table, its files, the device plugin manifest against the schema, and
the parsing verify.py does of `kubectl get nodes -o json`."""

from __future__ import annotations

import yaml
from roles.kubernetes import tasks
from roles.kubernetes.verify import gpu_shortfall, nodes_not_ready

from podium.cluster.k3s import k3s_settings
from podium.cluster.validate import problems
from podium.errors import InvalidInput
from podium.files import files_for
from podium.stack.model import Stack
from podium.stack.versions import VersionTable
from tests.fixtures_cluster import cluster_stack, small_stack, versions

__all__ = ["cluster_stack", "small_stack", "versions"]


def test_settings_take_urls_and_sha256_from_the_version_table(cluster_stack: Stack,
                                                              versions: VersionTable) -> None:
    s = k3s_settings(cluster_stack, versions, "gpu1")
    table = versions.components["kubernetes"].artifacts
    assert s["binary"] == {"url": "http://10.70.0.1:8081/podium/k3s/v1.31.4+k3s1/k3s",
                           "sha256": table["k3s"].sha256}
    assert s["images"]["sha256"] == table["k3s-airgap-images-amd64.tar.zst"].sha256
    assert s["server"] is False and s["server_url"] == "https://10.70.0.10:6443"
    assert s["labels"] == {"podium.io/pool": "gpu", "podium.io/gpu": "true"}
    assert s["gpu_nodes"] == {"gpu1": 4} and s["cluster_nodes"] == ["ctl", "gpu1", "cpu1"]
    assert s["device_plugin_image"].startswith("10.70.0.1:8081/nvidia/k8s-device-plugin:")


def test_up_refuses_a_k3s_stack_without_a_mirror(small_stack: Stack,
                                                 versions: VersionTable) -> None:
    from podium.plan import make_plan
    from podium.up import preflight

    assert k3s_settings(small_stack, versions, "solo")["binary"]["url"] is None
    try:
        preflight(small_stack, make_plan(small_stack, versions))
    except InvalidInput as exc:
        assert "artifact_mirror" in str(exc)
    else:
        raise AssertionError("a k3s stack without a mirror must be refused before any host is touched")


def test_server_and_agent_configs(cluster_stack: Stack, versions: VersionTable) -> None:
    server = yaml.safe_load(files_for("kubernetes", "ctl",
                                      k3s_settings(cluster_stack, versions, "ctl"))["config.yaml"])
    agent = yaml.safe_load(files_for("kubernetes", "gpu1",
                                     k3s_settings(cluster_stack, versions, "gpu1"))["config.yaml"])
    assert server["token-file"] == agent["token-file"] == "/etc/rancher/k3s/podium-token"
    assert "server" not in server and server["tls-san"] == ["10.70.0.10", "ctl"]
    assert server["write-kubeconfig-mode"] == "0600"
    assert agent["server"] == "https://10.70.0.10:6443" and agent["node-ip"] == "10.70.0.11"
    assert agent["node-label"] == ["podium.io/pool=gpu", "podium.io/gpu=true"]
    assert "node-label" not in yaml.safe_load(files_for(
        "kubernetes", "cpu1", k3s_settings(cluster_stack, versions, "cpu1"))["config.yaml"])


def test_unit_and_registries(cluster_stack: Stack, versions: VersionTable) -> None:
    files = files_for("kubernetes", "ctl", k3s_settings(cluster_stack, versions, "ctl"))
    assert "ExecStart=/usr/local/bin/k3s server" in files["k3s.service"]
    agent = files_for("kubernetes", "cpu1", k3s_settings(cluster_stack, versions, "cpu1"))
    assert "ExecStart=/usr/local/bin/k3s agent" in agent["k3s.service"]
    mirrors = yaml.safe_load(files["registries.yaml"])["mirrors"]
    assert mirrors["10.70.0.1:8081"]["endpoint"] == ["http://10.70.0.1:8081"]
    assert mirrors["docker.io"]["endpoint"] == ["http://10.70.0.1:8081"]


def test_device_plugin_manifest_is_valid_for_the_pinned_kubernetes(
    cluster_stack: Stack, versions: VersionTable
) -> None:
    text = files_for("kubernetes", "ctl",
                     k3s_settings(cluster_stack, versions, "ctl"))["nvidia-device-plugin.yaml"]
    docs = [d for d in yaml.safe_load_all(text) if d]
    assert [d["kind"] for d in docs] == ["RuntimeClass", "DaemonSet"]
    for doc in docs:
        assert problems(doc, "1.31") == [], doc["kind"]
    pod = docs[1]["spec"]["template"]["spec"]
    assert pod["nodeSelector"] == {"podium.io/gpu": "true"} and pod["runtimeClassName"] == "nvidia"


def test_role_shell_commands(cluster_stack: Stack, versions: VersionTable) -> None:
    s = k3s_settings(cluster_stack, versions, "ctl")
    assert tasks.unit_name(s) == "k3s"
    assert "https://10.70.0.10:6443" in tasks.kubeconfig_command(s, "/etc/rancher/k3s/x.yaml")
    assert "umask 077" in tasks.kubeconfig_command(s, "/x")
    assert "get --raw /readyz" in tasks.readyz_command("/usr/local/bin/k3s", 5)


NODES = {"items": [
    {"metadata": {"name": "ctl"}, "status": {"conditions": [{"type": "Ready", "status": "True"}],
                                             "allocatable": {"cpu": "2"}}},
    {"metadata": {"name": "gpu1"}, "status": {
        "conditions": [{"type": "Ready", "status": "False", "reason": "KubeletNotReady"}],
        "allocatable": {"nvidia.com/gpu": "1"}}},
]}


def test_verify_names_nodes_that_are_not_ready_or_missing() -> None:
    assert nodes_not_ready(NODES, ["ctl", "gpu1", "cpu1"]) == [
        "gpu1: not Ready (KubeletNotReady)", "cpu1: not registered"]
    assert nodes_not_ready(NODES, ["ctl"]) == []


def test_verify_names_gpu_nodes_advertising_too_few_gpus() -> None:
    assert gpu_shortfall(NODES, {"gpu1": 2}) == ["gpu1: advertises 1 of 2 GPUs"]
    assert gpu_shortfall(NODES, {"gpu1": 1}) == []


def test_up_refuses_k3s_files_whose_sha256_nobody_recorded(cluster_stack: Stack,
                                                            versions: VersionTable) -> None:
    from podium.plan import make_plan
    from podium.up import preflight

    assert cluster_stack.artifact_mirror
    assert versions.components["kubernetes"].artifacts["k3s"].operator_supplied
    try:
        preflight(cluster_stack, make_plan(cluster_stack, versions))
    except InvalidInput as exc:
        assert "k3s file k3s is operator-supplied" in str(exc)
        assert "components.kubernetes.artifacts.k3s.sha256" in str(exc)
    else:
        raise AssertionError("k3s without a recorded sha256 must be refused before any host is touched")
