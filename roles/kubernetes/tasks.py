"""Role kubernetes, its verbs: deploy, check, remove. pyinfra runs each operation on every host
before the next, so the server is started and ready before any agent starts to join it."""

from io import StringIO

from pyinfra import host
from pyinfra.api import deploy as pyinfra_deploy
from pyinfra.api.exceptions import DeployError
from pyinfra.facts.server import Command
from pyinfra.operations import files, server, systemd
from pyinfra.operations.util import any_changed

from podium.cluster.up import kubeconfig_path
from podium.files import files_for
from podium.secrets import StackSecrets
from roles import checks
from roles.kubernetes.defaults import DEFAULTS


def unit_name(settings: dict) -> str:
    return "k3s" if settings["server"] else "k3s-agent"


def readyz_command(binary: str, timeout_s: int) -> str:
    """Poll the API server until it answers /readyz; fail naming what it waited for."""
    return (
        f"for i in $(seq {timeout_s}); do {binary} kubectl get --raw /readyz >/dev/null 2>&1 "
        f"&& exit 0; sleep 1; done; echo 'k3s API server not ready after {timeout_s}s' >&2; exit 1"
    )


def kubeconfig_command(settings: dict, remote: str) -> str:
    """The server's kubeconfig, pointing at its own address, readable by root only."""
    return f"umask 077 && {kubeconfig_text(settings)} > {remote}"


def kubeconfig_text(settings: dict) -> str:
    """A command printing the server's kubeconfig with its own address in."""
    return f"sed 's#https://127.0.0.1:6443#{settings['server_url']}#' /etc/rancher/k3s/k3s.yaml"


@pyinfra_deploy("kubernetes: deploy", data_defaults=DEFAULTS)
def deploy() -> None:
    s = host.data.podium_kubernetes
    if not s["mirror"]:
        raise DeployError(
            f"{host.name}: k3s is installed from the artifact mirror, but the stack sets no "
            "artifact_mirror; name the mirror that holds k3s and its air-gap images"
        )
    for artifact in ("binary", "images"):
        if not s[artifact]["sha256"]:
            # files.download without a digest would install whatever the mirror holds.
            raise DeployError(
                f"{host.name}: k3s {artifact} for {s['version']} has no sha256 in stacks/versions.yaml; "
                "put the file in the bundle's kubernetes slot and record its sha256 there"
            )
    rendered = files_for("kubernetes", host.name, s)
    conf, binary = host.data.kubernetes_config_dir, host.data.kubernetes_binary
    files.directory(name="k3s config folder", path=conf, mode="755")
    files.directory(name="k3s air-gap images folder", path=host.data.kubernetes_images_dir)
    # files.download checks the sha256 and downloads again when the file on the node differs.
    got_binary = files.download(
        name=f"k3s {s['version']} from the mirror", src=s["binary"]["url"], dest=binary,
        sha256sum=s["binary"]["sha256"], mode="755",
    )
    got_images = files.download(
        name="k3s air-gap images from the mirror", src=s["images"]["url"],
        dest=f"{host.data.kubernetes_images_dir}/{s['images']['file']}",
        sha256sum=s["images"]["sha256"],
    )
    token = files.put(
        name="Cluster join token", src=StringIO(StackSecrets(host.data.podium_stack).token("k3s") + "\n"),
        dest=s["token_file"], mode="600",
    )
    config = files.put(name="k3s config", src=StringIO(rendered["config.yaml"]),
                       dest=f"{conf}/config.yaml", mode="600")
    registries = files.put(name="k3s registries: the mirror only",
                           src=StringIO(rendered["registries.yaml"]),
                           dest=f"{conf}/registries.yaml", mode="644")
    unit = files.put(name=f"{unit_name(s)} unit", src=StringIO(rendered["k3s.service"]),
                     dest=f"/etc/systemd/system/{unit_name(s)}.service", mode="644")
    systemd.daemon_reload(name="Reload systemd for the k3s unit", _if=unit.did_change)
    changed = [got_binary, got_images, token, config, registries, unit]
    if s["server"]:
        # Asked before anything restarts: a server that answered then and was left alone needs
        # no waiting, so an unchanged node reports no change.
        ready = host.get_fact(Command, command=f"{binary} kubectl get --raw /readyz >/dev/null 2>&1 "
                              "&& echo ready || echo waiting") == "ready"
        remote = host.data.kubernetes_kubeconfig_remote
        kubeconfig = host.get_fact(Command, command=f"{kubeconfig_text(s)} 2>/dev/null "
                                   f"| cmp -s - {remote} && echo same || echo differs") == "same"
        _start(s, changed)
        server.shell(name="Wait for the k3s API server",
                     commands=[readyz_command(binary, host.data.kubernetes_ready_timeout_s)],
                     _if=lambda: not ready or any(op.did_change() for op in changed))
        if s["cluster_has_gpus"]:
            files.put(name="NVIDIA device plugin (auto-deployed by k3s)",
                      src=StringIO(rendered["nvidia-device-plugin.yaml"]),
                      dest=f"{host.data.kubernetes_manifests_dir}/podium-nvidia-device-plugin.yaml",
                      mode="600", create_remote_dir=True)
        server.shell(name="Kubeconfig with the server's address",
                     commands=[kubeconfig_command(s, remote)],
                     _if=lambda: not kubeconfig or any(op.did_change() for op in changed))
        local = host.data.kubernetes_kubeconfig_local or str(kubeconfig_path(host.data.podium_stack))
        files.get(name="Fetch the kubeconfig to the control machine", src=remote, dest=local)
    else:
        # pyinfra runs this after the server's readiness check: agents join a ready server.
        _start(s, changed)


def _start(s: dict, changed: list) -> None:
    # Restart only when the binary, images, token, config or unit changed.
    systemd.service(name=f"Restart {unit_name(s)} after a change", service=unit_name(s),
                    running=True, enabled=True, restarted=True, _if=any_changed(*changed))
    systemd.service(name=f"Keep {unit_name(s)} running", service=unit_name(s), running=True,
                    enabled=True)


@pyinfra_deploy("kubernetes: check", data_defaults=DEFAULTS)
def check() -> None:
    s = host.data.podium_kubernetes
    commands = [f"systemctl is-active {unit_name(s)}"]
    if s["server"]:
        commands.append(f"{host.data.kubernetes_binary} kubectl get --raw /readyz")
    checks.passes(name="k3s is running", commands=commands, proves=f"{unit_name(s)} active and ready")


@pyinfra_deploy("kubernetes: remove", data_defaults=DEFAULTS)
def remove() -> None:
    for unit in ("k3s", "k3s-agent"):
        systemd.service(name=f"Stop {unit}", service=unit, running=False, enabled=False)
        files.file(name=f"Remove the {unit} unit", path=f"/etc/systemd/system/{unit}.service",
                   present=False)
    systemd.daemon_reload(name="Reload systemd after removing k3s")
    files.file(name="Remove k3s", path=host.data.kubernetes_binary, present=False)
    files.directory(name="Remove k3s config", path=host.data.kubernetes_config_dir,
                    present=False)
    files.directory(name="Remove k3s data", path=host.data.kubernetes_data_dir, present=False)
