"""Where roles fetch the operator's artifacts: the gpu, k3s and dcgm-exporter roles ask for the
bundle's slots under `artifact_mirror: {bundle: ...}` and for a site mirror's old paths under a
URL, the bundle's manifest names the same paths, and the mirror serves NVIDIA's tar unpacked
where the gpu role reads it."""

from __future__ import annotations

import subprocess
import tarfile
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from roles.gpu import repos
from roles.gpu.defaults import DEFAULTS as GPU_DEFAULTS
from roles.monitoring.tasks import dcgm_exporter_url, grafana_deb_url

from podium.bundle.artifact_urls import UNPACKED_MARK, filled_slots, unpack_command
from podium.bundle.contents import bundle_contents
from podium.bundle.manifest import write_manifest
from podium.cluster.k3s import k3s_settings
from podium.files import files_for
from podium.monitoring import role_files as rf
from podium.plan.components import BY_NAME
from podium.stack.model import Stack
from podium.stack.reading import StackError
from podium.stack.versions import Artifact, VersionTable, load_versions
from tests.fixtures_cluster import CLUSTER_STACK, write_stack

SITE = "artifact_mirror: http://10.70.0.1:8081/podium"
# Served by the registry's node, ctl; a bundle's GPU nodes take NVIDIA's packages from its slot.
BUNDLE = "artifact_mirror: {bundle: ../bundle}\ngpu: {source: mirror}"
SLOT_URL = "https://10.70.0.10:8440/slots"
DEBIAN = repos.Node("debian", "12", "amd64", "6.1.0-28-amd64")
# What NVIDIA's two repositories hold that the gpu role reads, as paths under nvidia/.
NVIDIA_FILES = ["compute/cuda/repos/debian12/x86_64/3bf863cc.pub",
                "compute/cuda/repos/debian12/x86_64/Packages",
                "libnvidia-container/gpgkey",
                "libnvidia-container/stable/deb/amd64/Packages"]


def _stack(tmp_path: Path, mirror: str) -> Stack:
    return write_stack(tmp_path / "stack", CLUSTER_STACK.replace(SITE, mirror))


def _gpu_urls(stack: Stack) -> list[str]:
    """Every URL the gpu role's apt sources and keys name on gpu1."""
    settings = BY_NAME["gpu"].settings(stack, "gpu1")
    urls = list(repos.keys(settings, DEBIAN, GPU_DEFAULTS).values())
    for text in repos.sources(settings, DEBIAN, GPU_DEFAULTS).values():
        urls += [line.split(": ", 1)[1] for line in text.splitlines() if line.startswith("URIs: ")]
    return urls


def _nvidia_urls(base: str) -> list[str]:
    """NVIDIA's two apt repositories and their keys, at NVIDIA's paths under `base`."""
    cuda = f"{base}/compute/cuda/repos/debian12/x86_64"
    toolkit = f"{base}/libnvidia-container"
    return sorted([f"{cuda}/3bf863cc.pub", f"{cuda}/", f"{toolkit}/gpgkey", f"{toolkit}/stable/deb/amd64/"])


def _role_urls(stack: Stack, table: VersionTable) -> dict[str, str | None]:
    k3s = k3s_settings(stack, table, "gpu1")
    return {"k3s": k3s["binary"]["url"], "images": k3s["images"]["url"],
            "dcgm": dcgm_exporter_url(BY_NAME["monitoring"].settings(stack, "gpu1"), table)}


def test_a_site_mirror_keeps_the_paths_roles_always_asked_for(tmp_path: Path) -> None:
    stack, table = _stack(tmp_path, SITE), load_versions()
    site = "http://10.70.0.1:8081/podium"
    assert _role_urls(stack, table) == {
        "k3s": f"{site}/k3s/v1.31.4+k3s1/k3s",
        "images": f"{site}/k3s/v1.31.4+k3s1/k3s-airgap-images-amd64.tar.zst",
        "dcgm": f"{site}/dcgm-exporter/3.3.9-3.6.1/dcgm-exporter",
    }
    gpu = write_stack(tmp_path / "gpu", CLUSTER_STACK.replace(SITE, f"{SITE}\ngpu: {{source: mirror}}"))
    assert sorted(_gpu_urls(gpu)) == _nvidia_urls(f"{site}/nvidia")


def test_a_bundle_stack_asks_for_the_bundles_slots(tmp_path: Path) -> None:
    stack, table = _stack(tmp_path, BUNDLE), load_versions()
    assert _role_urls(stack, table) == {
        "k3s": f"{SLOT_URL}/kubernetes/k3s",
        "images": f"{SLOT_URL}/kubernetes/k3s-airgap-images-amd64.tar.zst",
        "dcgm": f"{SLOT_URL}/monitoring/dcgm-exporter/3.3.9-3.6.1/dcgm-exporter",
    }
    assert sorted(_gpu_urls(stack)) == _nvidia_urls(f"{SLOT_URL}/gpu/nvidia-cuda-debian12-x86_64")


def test_a_bundle_gpu_node_is_refused_any_source_but_the_slot(tmp_path: Path) -> None:
    with pytest.raises(StackError) as caught:
        _stack(tmp_path, "artifact_mirror: {bundle: ../bundle}")
    message = str(caught.value)
    assert "gpu.source" in message and "distribution" in message and "set gpu.source: mirror" in message


def _recorded(table: VersionTable, digests: dict[tuple[str, str], str]) -> VersionTable:
    """The table with the operator's sha256 recorded for the given artifacts."""
    components = dict(table.components)
    for (component, key), sha256 in digests.items():
        entry = components[component]
        art = entry.artifacts[key]
        artifacts = {**entry.artifacts, key: Artifact(file=art.file, sha256=sha256, operator_supplied=True)}
        components[component] = entry.model_copy(update={"artifacts": artifacts})
    return table.model_copy(update={"components": components})


def _sha256(path: Path) -> str:
    return subprocess.run(["sha256sum", str(path)], capture_output=True, text=True, check=True).stdout.split()[0]


def test_the_manifests_slots_are_what_the_mirror_serves_at_the_urls_roles_ask_for(tmp_path: Path) -> None:
    """One source of truth: fill every slot the bundle's manifest names, lay the bundle out as the
    mirror serves it (the tar slot unpacked by the mirror role's own command), and find every
    file the gpu, k3s and dcgm-exporter roles ask for at the path their URL names."""
    stack, table = _stack(tmp_path, BUNDLE), load_versions()
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    slots = bundle_contents(stack, table).slots
    assert {(s.component, s.artifact) for s in slots} >= {
        ("gpu", "nvidia-repository"), ("kubernetes", "k3s"),
        ("kubernetes", "k3s-airgap-images-amd64.tar.zst"), ("monitoring", "dcgm-exporter")}
    write_manifest(bundle, table.release, stack.name, slots)
    assert filled_slots(bundle, table) == [], "an empty slot is neither shipped nor unpacked"
    tree = tmp_path / "nvidia"
    for rel in NVIDIA_FILES:
        (tree / rel).parent.mkdir(parents=True, exist_ok=True)
        (tree / rel).write_text(f"{rel}\n")
    digests = {}
    for slot in slots:
        path = bundle / slot.path
        path.parent.mkdir(parents=True, exist_ok=True)
        if slot.artifact == "nvidia-repository":
            with tarfile.open(path, "w") as tar:  # as README says: tar -C <mirror>/nvidia -cf FILE .
                tar.add(tree, arcname=".")
        else:
            path.write_text(f"{slot.artifact}\n")
        digests[(slot.component, slot.artifact)] = _sha256(path)
    table = _recorded(table, digests)

    filled = filled_slots(bundle, table)
    assert {s["path"] for s in filled} == {s.path for s in slots}
    for slot in filled:
        if slot["folder"]:
            subprocess.run(["sh", "-c", unpack_command(str(bundle / slot["path"]), str(bundle / slot["folder"]),
                                                       slot["sha256"])], check=True)
            assert (bundle / slot["folder"] / UNPACKED_MARK).read_text().strip() == slot["sha256"]
    asked = [*_gpu_urls(stack), *(u for u in _role_urls(stack, table).values() if u)]
    for url in asked:
        assert url.startswith(SLOT_URL), url
        served = bundle / urlsplit(url).path.lstrip("/")
        assert served.exists(), f"a role asks for {url}, which the bundle does not serve"
    assert (bundle / urlsplit(_role_urls(stack, table)["k3s"] or "").path.lstrip("/")).read_text() == "k3s\n"


def test_a_filled_or_refilled_slot_changes_what_the_mirror_ships(tmp_path: Path) -> None:
    stack, table = _stack(tmp_path, BUNDLE), load_versions()
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    write_manifest(bundle, table.release, stack.name, bundle_contents(stack, table).slots)
    empty = BY_NAME["mirror"].settings(stack, "ctl")
    k3s = bundle / "slots" / "kubernetes" / "k3s"
    k3s.parent.mkdir(parents=True)
    k3s.write_text("k3s\n")
    filled = BY_NAME["mirror"].settings(stack, "ctl")
    assert empty["slots"] == [] and filled["bundle_digest"] == empty["bundle_digest"]
    assert filled["slots"] == [{"path": "slots/kubernetes/k3s", "sha256": None, "folder": None}], (
        "a slot file the manifest cannot list must still reconfigure the mirror, or it is never shipped")


def test_a_bundle_stack_takes_grafana_from_its_slot_with_debians_dependencies(tmp_path: Path) -> None:
    """`monitoring.grafana_repository: bundle`: the .deb at the slot the manifest names, its
    Debian dependencies pinned in the bundle's apt repository, and no apt source for Grafana."""
    table = load_versions()
    stack = write_stack(tmp_path / "stack", CLUSTER_STACK.replace(SITE, BUNDLE).replace(
        "monitoring: {node: ctl}", "monitoring: {node: ctl, grafana_repository: bundle}"))
    settings = BY_NAME["monitoring"].settings(stack, "ctl")
    url = grafana_deb_url(settings, table)
    assert url == f"{SLOT_URL}/monitoring/grafana_11.3.0_amd64.deb"
    slots = bundle_contents(stack, table).slots
    slot = next(s for s in slots if (s.component, s.artifact) == ("monitoring", "grafana"))
    assert url.endswith("/" + slot.path)
    rendered = files_for("monitoring", "ctl", settings)
    assert rf.GRAFANA_SOURCE not in rendered and rf.GRAFANA_DROPIN in rendered
    assert any(p.startswith(rf.GRAFANA_DASHBOARDS) for p in rendered)
    wanted = table.extra("monitoring")["grafana_packages"]
    assert set(wanted) == {"adduser", "libfontconfig1", "musl"}
    debs = bundle_contents(stack, table).debs
    assert {p: debs.get(p) for p in wanted} == wanted
    # A bundle stack without Grafana from its slot carries none of them for Grafana's sake.
    plain = _stack(tmp_path / "plain", BUNDLE)
    assert "musl" not in bundle_contents(plain, table).debs


def test_grafana_from_a_bundle_is_refused_where_the_stack_serves_none(tmp_path: Path) -> None:
    with pytest.raises(StackError) as caught:
        write_stack(tmp_path / "stack", CLUSTER_STACK.replace(
            "monitoring: {node: ctl}", "monitoring: {node: ctl, grafana_repository: bundle}"))
    message = str(caught.value)
    assert "monitoring.grafana_repository" in message and "set artifact_mirror: {bundle: PATH}" in message
