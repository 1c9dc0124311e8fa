"""The gpu role: its facts parsed from recorded real output, the packages and apt sources it picks,
its rendered files, a real run on this GPU-less machine (a noop) and its verify failing with both
counts when GPUs are missing."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import testinfra
import yaml
from pyinfra.api.exceptions import DeployError
from roles.gpu import repos
from roles.gpu import verify as gpu_verify
from roles.gpu.defaults import DEFAULTS
from roles.gpu.facts import driver_branch, parse_pci, parse_smi_csv

from podium.drivers.pyinfra_runner import run_component
from podium.files import files_for
from podium.plan.actions import make_plan
from podium.stack import load_stack
from podium.stack.versions import load_versions

# `lspci -Dnn | egrep -i "nvidia|vga"` on an HGX H100 server (8 GPUs, 4 NVSwitches), as published
# in a RHEL AI setup guide.
LSPCI_HGX_H100 = """\
0000:04:00.0 VGA compatible controller [0300]: ASPEED Technology, Inc. ASPEED Graphics Family [1a03:2000] (rev 52)
0000:07:00.0 Bridge [0680]: NVIDIA Corporation GH100 [H100 NVSwitch] [10de:22a3] (rev a1)
0000:08:00.0 Bridge [0680]: NVIDIA Corporation GH100 [H100 NVSwitch] [10de:22a3] (rev a1)
0000:09:00.0 Bridge [0680]: NVIDIA Corporation GH100 [H100 NVSwitch] [10de:22a3] (rev a1)
0000:0a:00.0 Bridge [0680]: NVIDIA Corporation GH100 [H100 NVSwitch] [10de:22a3] (rev a1)
0000:1b:00.0 3D controller [0302]: NVIDIA Corporation GH100 [H100 SXM5 80GB] [10de:2330] (rev a1)
0000:43:00.0 3D controller [0302]: NVIDIA Corporation GH100 [H100 SXM5 80GB] [10de:2330] (rev a1)
0000:52:00.0 3D controller [0302]: NVIDIA Corporation GH100 [H100 SXM5 80GB] [10de:2330] (rev a1)
0000:61:00.0 3D controller [0302]: NVIDIA Corporation GH100 [H100 SXM5 80GB] [10de:2330] (rev a1)
0000:9d:00.0 3D controller [0302]: NVIDIA Corporation GH100 [H100 SXM5 80GB] [10de:2330] (rev a1)
0000:c3:00.0 3D controller [0302]: NVIDIA Corporation GH100 [H100 SXM5 80GB] [10de:2330] (rev a1)
0000:d1:00.0 3D controller [0302]: NVIDIA Corporation GH100 [H100 SXM5 80GB] [10de:2330] (rev a1)
0000:df:00.0 3D controller [0302]: NVIDIA Corporation GH100 [H100 SXM5 80GB] [10de:2330] (rev a1)
"""

# `lspci -nnk` lines from forum posts: an nForce board's NVIDIA Ethernet is a bridge, not an
# NVSwitch; a laptop's GeForce is a 3D controller.
LSPCI_DESKTOP = """\
00:07.0 Bridge [0680]: nVidia Corporation MCP61 Ethernet [10de:03ef] (rev a2)
01:00.0 3D controller [0302]: NVIDIA Corporation GP107M [GeForce GTX 1050 Ti Mobile] [10de:1c8c] (rev a1)
"""

# `nvidia-smi --query-gpu=index,name,driver_version,pci.bus_id --format=csv` on a node whose
# third GPU kept an older driver, as published in a GPU operations guide.
SMI_DRIFT = """\
index, name, driver_version, pci.bus_id
0, NVIDIA H100 80GB HBM3, 550.90.07, 00000000:1B:00.0
1, NVIDIA H100 80GB HBM3, 550.90.07, 00000000:1C:00.0
2, NVIDIA H100 80GB HBM3, 550.54.15, 00000000:3D:00.0
3, NVIDIA H100 80GB HBM3, 550.90.07, 00000000:3E:00.0
"""

# A query with unit-suffixed columns, from a machine report (one H100, driver 595).
SMI_UNITS = """\
index, name, driver_version, pstate, pcie.link.gen.current, temperature.gpu, utilization.gpu [%], \
utilization.memory [%], memory.total [MiB], memory.free [MiB], memory.used [MiB]
0, NVIDIA H100 80GB HBM3, 595.71.05, P0, 5, 29, 0 %, 0 %, 81559 MiB, 81081 MiB, 0 MiB
"""

PINS = load_versions().extra("gpu")["packages"]
DEBIAN = repos.Node("debian", "12", "amd64", "6.1.0-28-amd64")
UBUNTU = repos.Node("ubuntu", "22.04", "amd64", "5.15.0-127-generic")


def _settings(**overrides: Any) -> dict[str, Any]:
    base = {"expected_gpus": 8, "nvswitch": False, "driver_branch": "550", "source": "nvidia",
            "container_toolkit": True, "persistence": True, "mirror": None}
    return {**base, **overrides}


def test_pci_fact_counts_gpus_and_nvswitches_of_an_hgx_server() -> None:
    found = parse_pci(LSPCI_HGX_H100)
    assert len(found["gpus"]) == 8
    assert len(found["nvswitches"]) == 4
    assert found["gpus"][0] == {"slot": "0000:1b:00.0", "name": "NVIDIA Corporation GH100 [H100 SXM5 80GB]",
                                "device": "2330"}


def test_pci_fact_does_not_take_a_chipset_bridge_for_an_nvswitch() -> None:
    found = parse_pci(LSPCI_DESKTOP)
    assert [g["device"] for g in found["gpus"]] == ["1c8c"]
    assert found["nvswitches"] == []


def test_pci_fact_reads_the_sysfs_fallback_lines() -> None:
    lines = "0000:1b:00.0 Class [0302]: NVIDIA [10de:2330]\n0000:07:00.0 Class [0680]: NVIDIA [10de:22a3]\n"
    found = parse_pci(lines)
    assert len(found["gpus"]) == 1 and len(found["nvswitches"]) == 1


def test_smi_fact_parses_rows_by_header_and_shows_driver_drift() -> None:
    rows = parse_smi_csv(SMI_DRIFT)
    assert [r["index"] for r in rows] == ["0", "1", "2", "3"]
    assert sorted({r["driver_version"] for r in rows}) == ["550.54.15", "550.90.07"]
    assert {driver_branch(r["driver_version"]) for r in rows} == {"550"}
    units = parse_smi_csv(SMI_UNITS)
    assert units[0]["memory.total"] == "81559 MiB" and units[0]["driver_version"] == "595.71.05"


def test_smi_fact_without_a_driver_is_empty() -> None:
    assert parse_smi_csv("") == []
    assert parse_smi_csv("NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver.") == []


def test_debian_packages_only_their_own_branch() -> None:
    packaged = PINS["nvidia-driver"].split(".")[0]
    with pytest.raises(DeployError, match=f"packages NVIDIA driver branch {packaged}, the stack asks for 550"):
        repos.packages(_settings(source="distribution"), DEBIAN, PINS)
    wanted = repos.packages(_settings(source="distribution", driver_branch=packaged), DEBIAN, PINS)
    assert f"nvidia-driver={PINS['nvidia-driver']}" in wanted
    assert "linux-headers-6.1.0-28-amd64" in wanted


def test_nvswitch_needs_fabric_manager_from_nvidia() -> None:
    with pytest.raises(DeployError, match="fabric manager"):
        repos.packages(_settings(source="distribution", driver_branch="535", nvswitch=True), DEBIAN, PINS)
    wanted = repos.packages(_settings(nvswitch=True), UBUNTU, PINS)
    assert "cuda-drivers-550" in wanted and "nvidia-fabricmanager-550" in wanted
    toolkit = PINS["nvidia-container-toolkit"]
    assert f"nvidia-container-toolkit={toolkit}" in wanted


def test_nvidia_repository_sources_and_keys() -> None:
    sources = repos.sources(_settings(), UBUNTU, DEFAULTS)
    assert "URIs: https://developer.download.nvidia.com/compute/cuda/repos/ubuntu2204/x86_64/" in sources[
        "podium-cuda.sources"]
    assert "Signed-By: /etc/apt/keyrings/podium-cuda.asc" in sources["podium-cuda.sources"]
    keys = repos.keys(_settings(), UBUNTU, DEFAULTS)
    assert keys["podium-cuda.asc"].endswith("/ubuntu2204/x86_64/3bf863cc.pub")


def test_mirror_keeps_nvidias_paths_under_the_artifact_mirror() -> None:
    settings = _settings(source="mirror", mirror="http://mirror.site:8081/")
    sources = repos.sources(settings, DEBIAN, DEFAULTS)
    assert "URIs: http://mirror.site:8081/nvidia/compute/cuda/repos/debian12/x86_64/" in sources[
        "podium-cuda.sources"]
    assert "URIs: http://mirror.site:8081/nvidia/libnvidia-container/stable/deb/amd64/" in sources[
        "podium-nvidia-container-toolkit.sources"]
    assert all("nvidia.com" not in url and "github.io" not in url
               for url in repos.keys(settings, DEBIAN, DEFAULTS).values())
    with pytest.raises(DeployError, match="no artifact_mirror"):
        repos.sources(_settings(source="mirror"), DEBIAN, DEFAULTS)


def test_distribution_source_on_debian_adds_non_free() -> None:
    sources = repos.sources(_settings(source="distribution", container_toolkit=False), DEBIAN, DEFAULTS)
    assert list(sources) == ["podium-debian-nonfree.sources"]
    assert "Components: contrib non-free non-free-firmware" in sources["podium-debian-nonfree.sources"]


def test_unsupported_distribution_is_named() -> None:
    with pytest.raises(DeployError, match="rocky 9 is not a distribution"):
        repos.packages(_settings(), repos.Node("rocky", "9", "amd64", "5.14"), PINS)


def _gpu_stack(tmp_path: Path, gpus: int = 2) -> Any:
    folder = tmp_path / "gpustack"
    folder.mkdir(exist_ok=True)
    (folder / "stack.yaml").write_text(yaml.safe_dump({
        "name": "gpustack",
        "nodes": [{"name": "gpu1", "address": "192.0.2.20", "gpus": gpus, "nvswitch": True},
                  {"name": "cpu1", "address": "192.0.2.21"}],
        "network": {"admin_sources": ["192.0.2.0/28"]},
        "gpu": {"driver_branch": "550", "source": "nvidia"},
    }))
    return load_stack(str(folder))


def test_gpu_files_render_from_the_stack(tmp_path: Path) -> None:
    stack = _gpu_stack(tmp_path)
    actions = [a for a in make_plan(stack, load_versions()) if a.component == "gpu"]
    assert [a.host for a in actions] == ["gpu1"], "only nodes with GPUs get the gpu role"
    settings = actions[0].settings
    assert settings["expected_gpus"] == 2 and settings["nvswitch"] is True
    files = files_for("gpu", "gpu1", settings)
    assert set(files) == set(DEFAULTS["gpu_files"])
    assert "Pin: version 550.*" in files["nvidia-branch.pref"]
    assert "blacklist nouveau" in files["blacklist-nouveau.conf"]


def _local_has_nvidia() -> bool:
    devices = Path("/sys/bus/pci/devices")
    return devices.is_dir() and any(
        (d / "vendor").read_text().strip() == "0x10de" for d in devices.iterdir() if (d / "vendor").exists()
    )


def test_the_role_is_a_noop_on_a_machine_without_gpus(tmp_path: Path) -> None:
    """A real run of the gpu role on this machine through pyinfra's local connector."""
    if _local_has_nvidia():
        pytest.skip("this machine has an NVIDIA device: the no-GPU path cannot be shown on it")
    stack = _gpu_stack(tmp_path)
    settings = next(a.settings for a in make_plan(stack, load_versions()) if a.component == "gpu")
    run = run_component([("@local", {"podium_gpu": settings, "podium_stack": stack.name})], "gpu", "deploy")
    assert run.failed == {} and run.changes == 0


def test_verify_fails_with_both_counts_when_gpus_are_missing() -> None:
    """roles/gpu/verify.py against this GPU-less machine, as `podium verify` runs it."""
    if _local_has_nvidia():
        pytest.skip("this machine has an NVIDIA device: a missing-GPU count cannot be shown on it")
    host = testinfra.get_host("local://")
    with pytest.raises(AssertionError, match="the stack says 2 GPUs, nvidia-smi shows 0"):
        gpu_verify.test_010_gpu_count_matches_the_stack(host, _settings(expected_gpus=2))
