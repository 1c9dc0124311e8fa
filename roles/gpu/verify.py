"""Role gpu, proved on each host: the driver sees as many GPUs as the stack declares, on the
stack's driver branch, with persistence mode, the container toolkit and (on NVSwitch systems)
fabric manager running."""

from roles.gpu.facts import NvidiaSmi, driver_branch, parse_pci, parse_smi_csv

SMI = f"nvidia-smi --query-gpu={NvidiaSmi.QUERY} --format=csv"


def _gpus(host):
    result = host.run(SMI)
    return parse_smi_csv(result.stdout) if result.rc == 0 else []


def test_010_gpu_count_matches_the_stack(host, settings):
    found = _gpus(host)
    expected = settings["expected_gpus"]
    pci = parse_pci(host.run("lspci -Dnn -d 10de: 2>/dev/null").stdout)["gpus"]
    assert len(found) == expected, (
        f"the stack says {expected} GPUs, nvidia-smi shows {len(found)} (PCI shows {len(pci)})"
    )


def test_020_driver_branch_matches_the_stack(host, settings):
    versions = sorted({g["driver_version"] for g in _gpus(host)})
    branches = {driver_branch(v) for v in versions}
    assert branches == {settings["driver_branch"]}, (
        f"driver {', '.join(versions) or 'not loaded'}, the stack asks for branch {settings['driver_branch']}"
    )


def test_030_persistence_mode(host, settings):
    if not settings["persistence"]:
        return
    off = [g["index"] for g in _gpus(host) if g["persistence_mode"] != "Enabled"]
    assert not off, f"persistence mode is off on GPUs {', '.join(off)}"
    assert host.service("nvidia-persistenced").is_running, "nvidia-persistenced is not running"


def test_040_container_toolkit(host, settings):
    if not settings["container_toolkit"]:
        return
    assert host.run("nvidia-ctk --version").rc == 0, "nvidia-ctk (container toolkit) is missing"


def test_050_fabric_manager_on_nvswitch_systems(host, settings):
    if not settings["nvswitch"]:
        return
    assert host.service("nvidia-fabricmanager").is_running, "nvidia-fabricmanager is not running"
