"""What a node says about its NVIDIA hardware: PCI devices (before any driver) and nvidia-smi's
view (once the driver runs). Each fact is a command and a pure parser, tested on recorded output."""

from __future__ import annotations

import re
from typing import Any

from pyinfra.api import FactBase

NVIDIA_VENDOR = "10de"
# PCI classes of GPUs: VGA compatible controller, 3D controller.
GPU_CLASSES = ("0300", "0302")
# NVSwitch device ids, for lines without a name (the sysfs fallback): V100, A100 and H100 switches.
NVSWITCH_IDS = ("1ac0", "1ac1", "1ac2", "1af1", "22a3", "22a4")
_PCI_LINE = re.compile(
    r"^(?P<slot>\S+) (?P<kind>.*?) ?\[(?P<cls>[0-9a-f]{4})\]: (?P<name>.*?) "
    rf"\[{NVIDIA_VENDOR}:(?P<device>[0-9a-f]{{4}})\]",
    re.IGNORECASE,
)


def parse_pci(output: str) -> dict[str, list[dict[str, str]]]:
    """`lspci -Dnn -d 10de:` lines → the node's NVIDIA GPUs and NVSwitches.

    Chipsets of old boards show NVIDIA bridges that are not NVSwitches (nForce Ethernet), so a
    bridge counts only when its name or device id says NVSwitch.
    """
    gpus, switches = [], []
    for line in output.splitlines():
        match = _PCI_LINE.match(line.strip())
        if not match:
            continue
        device = {"slot": match["slot"], "name": match["name"], "device": match["device"].lower()}
        if match["cls"] in GPU_CLASSES:
            gpus.append(device)
        elif match["cls"] == "0680" and (
            "nvswitch" in match["name"].lower() or device["device"] in NVSWITCH_IDS
        ):
            switches.append(device)
    return {"gpus": gpus, "nvswitches": switches}


def parse_smi_csv(output: str) -> list[dict[str, str]]:
    """`nvidia-smi --query-gpu=... --format=csv` (with its header) → one dict per GPU."""
    lines = [line for line in output.splitlines() if line.strip()]
    if not lines or "," not in lines[0]:
        return []
    header = [h.strip().split(" [")[0] for h in lines[0].split(",")]
    rows = []
    for line in lines[1:]:
        values = [v.strip() for v in line.split(",")]
        if len(values) == len(header):
            rows.append(dict(zip(header, values, strict=True)))
    return rows


def driver_branch(version: str) -> str:
    """550.90.07 → 550."""
    return version.split(".", 1)[0]


class NvidiaPci(FactBase):  # type: ignore[misc]
    """NVIDIA GPUs and NVSwitches on the PCI bus; read from sysfs where lspci is missing."""

    @staticmethod
    def default() -> dict[str, Any]:
        return {"gpus": [], "nvswitches": []}

    def command(self) -> str:
        sysfs = (
            "for d in /sys/bus/pci/devices/*; do [ \"$(cat $d/vendor)\" = 0x10de ] && "
            "echo \"${d##*/} Class [$(cut -c3-6 $d/class)]: NVIDIA [10de:$(cut -c3- $d/device)]\"; done"
        )
        lspci = "lspci -Dnn -d 10de:"
        return f"if command -v lspci >/dev/null; then {lspci}; else {sysfs}; fi 2>/dev/null || true"

    def process(self, output: list[str]) -> dict[str, Any]:
        return parse_pci("\n".join(output))


class NvidiaSmi(FactBase):  # type: ignore[misc]
    """Each GPU the driver sees: index, name, driver_version, pci.bus_id, persistence_mode."""

    QUERY = "index,name,driver_version,pci.bus_id,persistence_mode"
    default = list

    def command(self) -> str:
        return f"nvidia-smi --query-gpu={self.QUERY} --format=csv 2>/dev/null || true"

    def process(self, output: list[str]) -> list[dict[str, str]]:
        return parse_smi_csv("\n".join(output))
