"""Role kubernetes, proved on each host: k3s runs, and on the server every cluster node is Ready
and every GPU node advertises its GPUs (`nvidia.com/gpu`) to the scheduler."""

import json

import pytest


def nodes_not_ready(nodes: dict, expected: list) -> list:
    """Names of expected nodes missing from `kubectl get nodes -o json` or not Ready, with why."""
    seen = {}
    for item in nodes.get("items", []):
        ready = [c for c in item["status"].get("conditions", []) if c["type"] == "Ready"]
        seen[item["metadata"]["name"]] = ready[0] if ready else None
    out = []
    for name in expected:
        if name not in seen:
            out.append(f"{name}: not registered")
        elif seen[name] is None or seen[name]["status"] != "True":
            reason = (seen[name] or {}).get("reason", "no Ready condition")
            out.append(f"{name}: not Ready ({reason})")
    return out


def gpu_shortfall(nodes: dict, expected: dict) -> list:
    """GPU nodes whose allocatable `nvidia.com/gpu` is below what the stack declares."""
    have = {}
    for item in nodes.get("items", []):
        allocatable = item["status"].get("allocatable", {})
        have[item["metadata"]["name"]] = int(allocatable.get("nvidia.com/gpu", 0))
    return [f"{name}: advertises {have.get(name, 0)} of {want} GPUs"
            for name, want in sorted(expected.items()) if have.get(name, 0) < want]


def _nodes(host) -> dict:
    return json.loads(host.check_output("k3s kubectl get nodes -o json"))


def test_010_k3s_runs(host, settings):
    unit = "k3s" if settings["server"] else "k3s-agent"
    assert host.service(unit).is_running, f"{unit} is not running"
    assert host.file("/etc/rancher/k3s/podium-token").mode == 0o600


def test_020_every_cluster_node_is_ready(host, settings):
    if not settings["server"]:
        pytest.skip("checked once, on the server")
    problems = nodes_not_ready(_nodes(host), settings["cluster_nodes"])
    assert not problems, "; ".join(problems)


def test_030_gpu_nodes_advertise_their_gpus(host, settings):
    if not settings["server"] or not settings["gpu_nodes"]:
        pytest.skip("no GPU nodes in the cluster, or not the server")
    problems = gpu_shortfall(_nodes(host), settings["gpu_nodes"])
    assert not problems, "; ".join(problems)
