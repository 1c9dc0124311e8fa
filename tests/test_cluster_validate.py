"""Every generated object passes the Kubernetes OpenAPI schema of the pinned version, strictly."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest

from podium.cluster import ClusterInputs, build_objects, validate_objects
from podium.cluster.validate import problems, target_version
from podium.errors import PodiumError
from podium.stack.loader import load_stack
from podium.stack.model import Stack
from podium.stack.versions import VersionTable
from tests.fixtures_cluster import cluster_stack, example_stacks, small_stack, versions

__all__ = ["cluster_stack", "small_stack", "versions"]

INPUTS = ClusterInputs(registry_user="u", registry_password="p", ca_pem="PEM",
                       gateway_tls_cert="C", gateway_tls_key="K", gateway_store_password="s")


def test_target_version_is_the_pinned_minor_release(versions: VersionTable) -> None:
    assert target_version(versions) == "1.31"


@pytest.mark.parametrize("given", [None, INPUTS], ids=["no-inputs", "with-secrets"])
def test_test_stacks_validate_against_the_pinned_schema(
    cluster_stack: Stack, small_stack: Stack, versions: VersionTable, given: ClusterInputs | None
) -> None:
    for stack in (cluster_stack, small_stack):
        objects = build_objects(stack, versions, given)
        assert objects, stack.name
        validate_objects(objects, versions)


CLUSTER_EXAMPLES = [f for f in example_stacks() if "kubernetes:" in (f / "stack.yaml").read_text()]


def test_some_example_stack_declares_a_cluster() -> None:
    assert CLUSTER_EXAMPLES, "no example stack has a kubernetes: section to validate"


@pytest.mark.parametrize("folder", CLUSTER_EXAMPLES, ids=lambda p: p.name)
def test_example_stacks_validate_against_the_pinned_schema(folder: Path,
                                                           versions: VersionTable) -> None:
    stack = load_stack(folder)
    assert stack.kubernetes is not None
    validate_objects(build_objects(stack, versions, INPUTS), versions)


def test_validation_catches_a_misspelt_field_and_names_it(small_stack: Stack,
                                                          versions: VersionTable) -> None:
    objects = build_objects(small_stack, versions)
    broken = copy.deepcopy(next(o for o in objects if o["kind"] == "Deployment"))
    broken["spec"]["template"]["spec"]["containers"][0]["imagePullPolice"] = "Always"
    found = problems(broken, "1.31")
    assert len(found) == 1 and "Deployment/chat-0" in found[0] and "imagePullPolice" in found[0]
    with pytest.raises(PodiumError, match="imagePullPolice"):
        validate_objects([*objects, broken], versions)


def test_validation_catches_wrong_types_and_bad_names(small_stack: Stack,
                                                      versions: VersionTable) -> None:
    svc = copy.deepcopy(next(o for o in build_objects(small_stack, versions)
                             if o["kind"] == "Service"))
    svc["spec"]["ports"][0]["port"] = "eighty"
    svc["metadata"]["name"] = "Chat_Service"
    found = problems(svc, "1.31")
    assert any("spec.ports.0.port" in p for p in found), found
    assert any("not a valid DNS name" in p for p in found), found
