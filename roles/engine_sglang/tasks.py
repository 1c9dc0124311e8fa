"""Role engine-sglang, its verbs: deploy, check, remove."""

from pyinfra import host
from pyinfra.api import deploy as pyinfra_deploy
from pyinfra.api.exceptions import DeployError

from podium import engine_files
from podium.artifacts import wheelhouse
from podium.pinned import node_versions
from roles import checks
from roles.engine_common import steps
from roles.engine_sglang.defaults import DEFAULTS

KIND = "sglang"


def requirements() -> list[str]:
    """The pins of stacks/versions.yaml at the host's SGLang version."""
    return list(node_versions().components["engine-sglang"].requirements)


@pyinfra_deploy("engine-sglang: deploy", data_defaults=DEFAULTS)
def deploy() -> None:
    version = host.data.podium_engine_sglang_version
    settings = steps.checked_settings(KIND, host.data.podium_engine_sglang)
    for replica in settings["replicas"]:
        if engine_files.device(replica) != "gpu":
            raise DeployError(
                f"engine {replica['engine']} on {host.name}: SGLang serves on GPUs only; "
                "give it gpus_per_replica: 1 or more, or use kind vllm with device: cpu"
            )
    steps.base_packages("engine-sglang", host.data.engine_sglang_packages)
    pins = requirements()
    folder = wheelhouse(f"sglang-{version}", pins)
    remote = steps.ship_wheelhouse(folder)
    venv = f"/opt/podium/sglang-{version}"
    steps.venv_from_wheelhouse(venv, remote, pins, what=f"SGLang {version}")
    binaries = steps.point_venv(engine_files.venv_name(KIND), venv)
    steps.registry_access(settings)
    steps.pull_models(settings, link_weights=False)
    steps.replica_units(
        KIND, settings, restart_all=[binaries], ready_timeout_s=host.data.engine_sglang_ready_timeout_s
    )


@pyinfra_deploy("engine-sglang: check", data_defaults=DEFAULTS)
def check() -> None:
    settings = host.data.podium_engine_sglang
    checks.passes(
        name="Every SGLang replica answers /health",
        commands=[f"curl -fsS -o /dev/null --max-time 5 http://127.0.0.1:{r['port']}/health"
                  for r in settings["replicas"]],
        proves="every replica answers /health",
    )


@pyinfra_deploy("engine-sglang: remove", data_defaults=DEFAULTS)
def remove() -> None:
    steps.remove_all(KIND, [engine_files.venv_name(KIND)])
