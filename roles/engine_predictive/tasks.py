"""Role engine-predictive, its verbs: deploy, check, remove."""

from pyinfra import host
from pyinfra.api import deploy as pyinfra_deploy
from pyinfra.operations import server

from podium import engine_files
from podium.artifacts import wheelhouse
from podium.pinned import node_versions
from roles import checks
from roles.engine_common import steps
from roles.engine_predictive.defaults import DEFAULTS

KIND = "predictive"


def requirements() -> list[str]:
    """MLServer, its scikit-learn runtime, skops and onnxruntime, pinned by stacks/versions.yaml
    at the host's MLServer version (skops matches the version that writes Podium's models)."""
    return list(node_versions().components["engine-predictive"].requirements)


@pyinfra_deploy("engine-predictive: deploy", data_defaults=DEFAULTS)
def deploy() -> None:
    version = host.data.podium_engine_predictive_version
    settings = steps.checked_settings(KIND, host.data.podium_engine_predictive)
    steps.base_packages("engine-predictive", host.data.engine_predictive_packages)
    venv = f"/opt/podium/mlserver-{version}"
    if settings["mirror"]:
        steps.venv_from_mirror(venv, settings["mirror"], "engine-predictive", [], what=f"MLServer {version}")
    else:
        # Downloaded once on the control machine; nodes install from it with no index.
        pins = requirements()
        remote = steps.ship_wheelhouse(wheelhouse(f"mlserver-{version}", pins))
        steps.venv_from_wheelhouse(venv, remote, pins, what=f"MLServer {version}")
    binaries = steps.point_venv(engine_files.venv_name(KIND), venv)
    runtime = steps.runtime_files()
    steps.registry_access(settings)
    steps.pull_models(settings, link_weights=True)
    steps.replica_units(
        KIND, settings, restart_all=[binaries, *runtime],
        ready_timeout_s=host.data.engine_predictive_ready_timeout_s,
    )


@pyinfra_deploy("engine-predictive: check", data_defaults=DEFAULTS)
def check() -> None:
    settings = host.data.podium_engine_predictive
    checks.passes(
        name="Every MLServer replica is ready",
        commands=[f"curl -fsS -o /dev/null --max-time 5 http://127.0.0.1:{r['port']}/v2/health/ready"
                  for r in settings["replicas"]],
        proves="every replica answers /v2/health/ready",
    )


@pyinfra_deploy("engine-predictive: remove", data_defaults=DEFAULTS)
def remove() -> None:
    steps.remove_all(KIND, [engine_files.venv_name(KIND)])
    server.shell(name="Remove Podium's MLServer runtime", commands=[f"rm -rf {engine_files.RUNTIME_PATH}"])
