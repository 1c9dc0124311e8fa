"""apply/prune/wait through the real `kubernetes` client, against a FAKE API server on 127.0.0.1
(no real cluster runs here): the requests, the pruning by label and the rollout wait."""

from __future__ import annotations

import base64
import hashlib
import json
from typing import Any

import pytest
import yaml
from cryptography import x509
from kubernetes.client import ApiClient, Configuration
from rich.console import Console

from podium.cluster import ClusterInputs, apply, build_objects
from podium.cluster.apply import rollout_state
from podium.cluster.inputs import CA_CONFIGMAP, GATEWAY_STORE, GATEWAY_TLS, REGISTRY_AUTH
from podium.cluster.stack_inputs import stack_inputs
from podium.errors import PodiumError
from podium.gateway_access import ADMIN_TOKEN
from podium.registry.ca import CaScope, ca_certificate
from podium.secrets import StackSecrets
from podium.stack.model import Stack
from podium.stack.versions import VersionTable
from tests.fixtures_cluster import (
    FakeCluster,
    cluster_stack,
    fake_api,
    small_stack,
    versions,
)

__all__ = ["cluster_stack", "fake_api", "small_stack", "versions"]

QUIET = Console(file=open("/dev/null", "w"))  # noqa: SIM115 (lives for the module)
NS = "podium-ai"


def test_apply_against_fake_api_server_uses_server_side_apply_with_field_manager(
    fake_api: tuple[FakeCluster, ApiClient], cluster_stack: Stack, versions: VersionTable
) -> None:
    cluster, client = fake_api
    objects = build_objects(cluster_stack, versions, ClusterInputs(registry_user="u",
                                                                   registry_password="p"))
    result = apply(objects, client, NS, poll_s=0.01, console=QUIET)
    patches = [r for r in cluster.requests if r[0] == "PATCH"]
    assert len(patches) == len(objects)
    for _method, _path, query, content_type in patches:
        assert content_type == "application/apply-patch+yaml"
        assert query["fieldManager"] == ["podium"] and query["force"] == ["true"]
    assert patches[0][1] == f"/api/v1/namespaces/{NS}"  # the namespace goes first
    assert f"/apis/apps/v1/namespaces/{NS}/deployments/chat-gpu-0" in cluster.objects
    assert f"/apis/discovery.k8s.io/v1/namespaces/{NS}/endpointslices/podium-registry-ctl" in (
        cluster.objects)
    assert result.applied == [f"{o['kind']}/{o['metadata']['name']}" for o in objects]
    deployments = sorted(o["metadata"]["name"] for o in objects if o["kind"] == "Deployment")
    assert sorted(result.rolled_out) == deployments
    assert result.pruned == []


def test_apply_against_fake_api_server_prunes_what_the_stack_no_longer_declares(
    fake_api: tuple[FakeCluster, ApiClient], cluster_stack: Stack, small_stack: Stack,
    versions: VersionTable,
) -> None:
    cluster, client = fake_api
    apply(build_objects(cluster_stack, versions), client, NS, poll_s=0.01, console=QUIET)
    # Something another tool owns in the same namespace, without Podium's labels: never touched.
    foreign = f"/api/v1/namespaces/{NS}/configmaps/not-podiums"
    cluster.objects[foreign] = {"kind": "ConfigMap", "metadata": {"name": "not-podiums",
                                                                  "labels": {"app": "x"}}}
    fewer = cluster_stack.model_copy(update={"kubernetes": cluster_stack.kubernetes.model_copy(
        update={"engines": ["chat-cpu"], "gateway": False})})
    result = apply(build_objects(fewer, versions), client, NS, poll_s=0.01, console=QUIET)
    assert "Deployment/chat-gpu-0" in result.pruned and "Service/iris" in result.pruned
    assert "ConfigMap/iris-0-mlserver" in result.pruned
    assert "Deployment/gateway-ctl" in result.pruned
    assert f"/apis/apps/v1/namespaces/{NS}/deployments/chat-gpu-0" not in cluster.objects
    assert f"/apis/apps/v1/namespaces/{NS}/deployments/chat-cpu-2" in cluster.objects
    assert foreign in cluster.objects
    # Deployments go before the config they read.
    deletes = [p for m, p, _, _ in cluster.requests if m == "DELETE"]
    assert "deployments" in deletes[0] and "configmaps" in deletes[-1]
    # Label selector sent to the list calls names this stack only.
    lists = [q for m, p, q, _ in cluster.requests if m == "GET" and "labelSelector" in q]
    assert lists and all(q["labelSelector"] == [
        "app.kubernetes.io/managed-by=podium,podium.io/stack=clustered"] for q in lists)


def test_apply_against_fake_api_server_keeps_volume_claims_and_reports_them(
    fake_api: tuple[FakeCluster, ApiClient], small_stack: Stack, versions: VersionTable
) -> None:
    cluster, client = fake_api
    apply(build_objects(small_stack, versions), client, "podium", poll_s=0.01, console=QUIET)
    no_gateway = small_stack.model_copy(update={"kubernetes": small_stack.kubernetes.model_copy(
        update={"gateway": False})})
    result = apply(build_objects(no_gateway, versions), client, "podium", poll_s=0.01,
                   console=QUIET)
    assert result.kept_claims == ["PersistentVolumeClaim/gateway-data"]
    assert "/api/v1/namespaces/podium/persistentvolumeclaims/gateway-data" in cluster.objects
    assert "Deployment/gateway-solo" in result.pruned


def test_apply_against_fake_api_server_prunes_everything_when_the_cluster_is_dropped(
    fake_api: tuple[FakeCluster, ApiClient], small_stack: Stack, versions: VersionTable
) -> None:
    cluster, client = fake_api
    apply(build_objects(small_stack, versions), client, "podium", poll_s=0.01, console=QUIET)
    with pytest.raises(PodiumError, match="stack_name"):
        apply([], client, "podium", console=QUIET)
    result = apply([], client, "podium", stack_name="small", console=QUIET)
    assert "Deployment/chat-0" in result.pruned
    remaining = {o["kind"] for o in cluster.objects.values()}
    assert remaining == {"Namespace", "PersistentVolumeClaim"}


def test_apply_against_fake_api_server_fails_naming_a_stuck_rollout(
    fake_api: tuple[FakeCluster, ApiClient], small_stack: Stack, versions: VersionTable
) -> None:
    cluster, client = fake_api
    cluster.stuck.add("chat-0")
    with pytest.raises(PodiumError, match=r"Deployment/chat-0 did not roll out: .*timed out"):
        apply(build_objects(small_stack, versions), client, "podium", poll_s=0.01, console=QUIET)


def test_apply_against_fake_api_server_times_out_naming_what_it_waits_for(
    fake_api: tuple[FakeCluster, ApiClient], small_stack: Stack, versions: VersionTable
) -> None:
    cluster, client = fake_api
    cluster.ready_after = 10**9
    with pytest.raises(PodiumError, match=r"Deployment/chat-0: waiting for the controller"):
        apply(build_objects(small_stack, versions), client, "podium", timeout_s=0.05,
              poll_s=0.01, console=QUIET)


def test_apply_reports_an_unreachable_api_server_in_one_sentence(small_stack: Stack,
                                                                 versions: VersionTable) -> None:
    # Port 9 on 127.0.0.1: nothing listens there, so the connection is refused at once.
    config = Configuration(host="http://127.0.0.1:9")
    config.retries = 0
    client = ApiClient(config)
    with pytest.raises(PodiumError, match="cannot reach the API server"):
        apply(build_objects(small_stack, versions), client, "podium", console=QUIET)
    client.close()


def test_rollout_state_follows_kubectl_rollout_status() -> None:
    dep = {"metadata": {"name": "x", "generation": 2}, "spec": {"replicas": 1}}
    assert rollout_state({**dep, "status": {"observedGeneration": 1}})[0] is False
    done = {"observedGeneration": 2, "replicas": 1, "updatedReplicas": 1, "availableReplicas": 1}
    assert rollout_state({**dep, "status": done}) == (True, "rolled out")
    old = {**done, "replicas": 2}
    assert rollout_state({**dep, "status": old}) == (False, "1 old replicas terminating")


def test_podium_up_cluster_step_against_fake_api_server_reads_the_stacks_kubeconfig(
    fake_api: tuple[FakeCluster, ApiClient], cluster_stack: Stack, versions: VersionTable,
    tmp_path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`podium up`'s cluster step: the kubeconfig the k3s role fetched, then apply with prune."""
    from podium.cluster.up import apply_cluster, kubeconfig_path

    cluster, client = fake_api
    monkeypatch.setenv("PODIUM_STATE_DIR", str(tmp_path))
    with pytest.raises(PodiumError, match="no kubeconfig"):
        apply_cluster(cluster_stack, versions, QUIET)
    kubeconfig_path(cluster_stack.name).write_text(
        "apiVersion: v1\nkind: Config\ncurrent-context: fake\n"
        f"clusters: [{{name: fake, cluster: {{server: '{client.configuration.host}'}}}}]\n"
        "contexts: [{name: fake, context: {cluster: fake, user: fake}}]\n"
        "users: [{name: fake, user: {token: t}}]\n"
    )
    # The host layer ran first in a real `podium up`: it made the stack CA.
    ca_certificate(cluster_stack.name, CaScope.of(cluster_stack))
    changed = apply_cluster(cluster_stack, versions, QUIET)
    assert changed == len(build_objects(cluster_stack, versions, stack_inputs(cluster_stack)))
    assert any(r[0] == "PATCH" for r in cluster.requests)
    # Every Secret and ConfigMap a pod names was applied with it, filled from the stack's
    # secrets: the registry pull account, the stack CA, the gateway's certificate and store
    # password, and the admin token's hash in the gateway's config.
    applied = {(o["kind"], o["metadata"]["name"]): o for o in cluster.objects.values()}
    named = referenced(list(applied.values()))
    assert named and named <= set(applied), named - set(applied)
    assert {("Secret", REGISTRY_AUTH), ("ConfigMap", CA_CONFIGMAP), ("Secret", GATEWAY_TLS),
            ("Secret", GATEWAY_STORE)} <= named
    secrets = StackSecrets(cluster_stack.name)
    pull = base64.b64decode(applied[("Secret", REGISTRY_AUTH)]["data"]["PODIUM_REGISTRY_PASSWORD"])
    assert pull.decode() == secrets.token("registry-pull")
    ca = ca_certificate(cluster_stack.name).read_text()
    assert applied[("ConfigMap", CA_CONFIGMAP)]["data"]["ca.pem"] == ca
    cert = x509.load_pem_x509_certificate(
        base64.b64decode(applied[("Secret", GATEWAY_TLS)]["data"]["tls.crt"]))
    assert cert.issuer == x509.load_pem_x509_certificate(ca.encode()).subject
    config = yaml.safe_load(applied[("ConfigMap", "gateway-config")]["data"]["gateway.yaml"])
    token = secrets.token(ADMIN_TOKEN)
    assert config["admin_token_sha256"] == hashlib.sha256(token.encode()).hexdigest()
    assert token not in json.dumps(list(applied.values())), "the admin token itself was applied"


def referenced(objects: list[dict[str, Any]]) -> set[tuple[str, str]]:
    """The (kind, name) of every Secret and ConfigMap the pods of `objects` mount or read
    (optional ones too: this stack's registry has accounts, so its pulls need theirs)."""
    out: set[tuple[str, str]] = set()
    for obj in objects:
        pod = obj.get("spec", {}).get("template", {}).get("spec")
        if not pod:
            continue
        for volume in pod.get("volumes", []):
            if "secret" in volume:
                out.add(("Secret", volume["secret"]["secretName"]))
            if "configMap" in volume:
                out.add(("ConfigMap", volume["configMap"]["name"]))
        for container in [*pod.get("initContainers", []), *pod.get("containers", [])]:
            for source in container.get("envFrom", []):
                ref = source.get("secretRef")
                if ref:
                    out.add(("Secret", ref["name"]))
            for env in container.get("env", []):
                ref = env.get("valueFrom", {}).get("secretKeyRef")
                if ref:
                    out.add(("Secret", ref["name"]))
    return out
