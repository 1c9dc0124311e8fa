"""Role gateway, its verbs: deploy, check, remove."""

import hashlib
import shlex
from collections.abc import Generator
from io import StringIO
from pathlib import Path

from pyinfra import host
from pyinfra.api import FunctionCommand, operation
from pyinfra.api import deploy as pyinfra_deploy
from pyinfra.api.operation import OperationMeta
from pyinfra.operations import apt, files, server, systemd
from pyinfra.operations.util import any_changed

from podium.artifacts import wheelhouse
from podium.bundle.wheels import locks_mark, pip_from_mirror
from podium.errors import PodiumError
from podium.files import files_for
from podium.gateway_access import ADMIN_TOKEN, declared_key_changes, reconcile_declared_keys
from podium.pinned import node_versions
from podium.registry.ca import ca_certificate, server_certificate
from podium.releases.book import ReleaseBook
from podium.secrets import StackSecrets
from podium.stack.versions import built
from roles import checks, folders
from roles.gateway import floating
from roles.gateway.defaults import DEFAULTS
from roles.store.accounts import STORE_PASSWORD, passfile

READY_MARK = checks.VENV_MARK


@pyinfra_deploy("gateway: deploy", data_defaults=DEFAULTS)
def deploy() -> None:
    settings = host.data.podium_gateway
    stack = host.data.podium_stack
    prefix, etc, data, user = (
        host.data.gateway_prefix,
        host.data.gateway_etc,
        host.data.gateway_data,
        host.data.gateway_user,
    )
    rendered = files_for("gateway", host.name, settings)
    address = host.data.ssh_hostname

    apt.packages(
        name="Python venv for the gateway",
        packages=node_versions().pinned("gateway", ["python3-venv", "curl"]),
    )
    server.group(name="Gateway group", group=user, system=True)
    server.user(name="Gateway user", user=user, group=user, system=True, home=data, shell="/usr/sbin/nologin",
                _if=lambda: not checks.user_as_declared(user, user, data, "/usr/sbin/nologin"))
    for path, owner, mode in ((prefix, "root", "755"), (etc, user, "750"), (data, user, "750")):
        files.directory(name=f"Folder {path}", path=path, user=owner, group=user, mode=mode)

    # One venv per build of Podium (venv-<version>) and a link the unit runs from: a new build
    # installs beside the running one, and a rollback to a kept release's build only flips the link.
    version = built("gateway", host.data.get("podium_gateway_version") or node_versions().version("gateway"))
    venv = f"{prefix}/venv-{version}"
    wheel = ReleaseBook(stack).wheel_for(version)
    if settings["mirror"]:
        installed = _install_from_mirror(settings["mirror"], prefix, venv, wheel)
    else:
        installed = _install_from_control_machine(prefix, venv, wheel)
    installed.append(files.link(name=f"Run the gateway from {venv}", path=f"{prefix}/venv", target=venv,
                                force=True, force_backup=False))

    changed = []
    changed.append(
        files.put(
            name="Gateway config",
            src=StringIO(rendered["gateway.yaml"]),
            dest=f"{etc}/gateway.yaml",
            user="root",
            group=user,
            mode="640",
        )
    )
    token = StackSecrets(stack).token(ADMIN_TOKEN)
    changed.append(
        files.put(
            name="Gateway admin token",
            src=StringIO(token + "\n"),
            dest=f"{etc}/admin-token",
            user="root",
            group=user,
            mode="640",
        )
    )
    if settings["tls"]:
        # Clients of the gateways' one address check it against the same certificate.
        shared = [settings["floating"]["address"]] if "floating" in settings else []
        cert, key = server_certificate(stack, f"gateway-{host.name}", [address, *shared], [host.name])
        changed.append(
            files.put(name="Gateway certificate", src=str(cert), dest=f"{etc}/tls.crt", mode="644")
        )
        changed.append(
            files.put(
                name="Gateway key", src=str(key), dest=f"{etc}/tls.key", user="root", group=user, mode="640"
            )
        )
        # gRPC clients (BoringSSL) refuse an IP address under the CA's name constraints, so
        # the gRPC listener's certificate names the node alone.
        grpc_cert, grpc_key = server_certificate(stack, f"gateway-grpc-{host.name}", [], [host.name])
        changed.append(
            files.put(name="Gateway gRPC certificate", src=str(grpc_cert), dest=f"{etc}/grpc-tls.crt", mode="644")
        )
        changed.append(
            files.put(
                name="Gateway gRPC key", src=str(grpc_key), dest=f"{etc}/grpc-tls.key", user="root", group=user,
                mode="640",
            )
        )
    if settings["tls"] or settings["store"] == "postgresql":
        # The gateway's own checks and its store's certificate are both checked against it.
        changed.append(
            files.put(name="Stack CA for the gateway", src=str(ca_certificate(stack)), dest=f"{etc}/ca.crt",
                      mode="644")
        )
    if settings["store"] == "postgresql":
        password = StackSecrets(stack).token(STORE_PASSWORD)
        changed.append(
            files.put(
                name="Store password file",
                src=StringIO(passfile(settings["store_address"], settings["store_port"], settings["store_database"],
                                      settings["store_user"], password)),
                dest=f"{etc}/store.pgpass",
                user=user,
                group=user,
                # libpq ignores a password file anyone else may read.
                mode="600",
            )
        )
    unit = files.put(
        name="Gateway unit",
        src=StringIO(rendered["podium-gateway.service"]),
        dest="/etc/systemd/system/podium-gateway.service",
        mode="644",
    )
    socket_unit = files.put(
        name="Gateway API socket unit",
        src=StringIO(rendered["podium-gateway.socket"]),
        dest="/etc/systemd/system/podium-gateway.socket",
        mode="644",
    )
    # Decided as the operations run (did_change), not while the role is prepared: asking then
    # would read every file's facts twice.
    systemd.daemon_reload(name="Reload systemd for the gateway unit", _if=any_changed(unit, socket_unit))
    # A gateway that bound the API port itself holds it until it stops; then systemd takes it.
    systemd.service(name="Stop the gateway to hand its port to systemd", service="podium-gateway",
                    running=False, _if=socket_unit.did_change)
    systemd.service(name="Hold the gateway's API port across restarts", service="podium-gateway.socket",
                    running=True, enabled=True, restarted=True, _if=socket_unit.did_change)
    systemd.service(name="Hold the gateway's API port", service="podium-gateway.socket", running=True,
                    enabled=True)
    systemd.service(
        name="Restart the gateway after its files changed",
        service="podium-gateway",
        running=True,
        enabled=True,
        restarted=True,
        _if=any_changed(*changed, unit, *installed),
    )
    systemd.service(name="Run the gateway", service="podium-gateway", running=True, enabled=True)
    scheme = "https" if settings["tls"] else "http"
    ca = f"--cacert {etc}/ca.crt" if settings["tls"] else ""
    server.shell(
        name="Wait for the gateway to answer",
        commands=[
            # Each try bounded: a port the socket unit holds accepts while no gateway answers.
            f"for i in $(seq 120); do curl -fsS --max-time 2 {ca} "
            f"{scheme}://{address}:{settings['port']}/v2/health/live >/dev/null && exit 0; sleep 0.5; done; exit 1"
        ],
        _if=any_changed(*changed, unit, *installed),
    )
    if "floating" in settings:
        floating.hold_the_address(settings)
    elif checks.output(f"test -e {floating.CONF} && echo held") == "held":
        # The stack no longer declares gateway.address: this node stops answering for it.
        floating.release_the_address()
    # Also with no key declared: keys the stack declared before are then revoked.
    declared_keys(
        name="Make the gateway's API keys those the stack declares",
        stack=stack,
        url=gateway_url_for(address, settings),
        keys=settings["keys"],
        teams=settings.get("teams", []),
    )


def _install_commands(venv: str, mark: str, pip: list[str]) -> list[str]:
    return [
        f"rm -rf {venv}",
        f"python3 -m venv {venv}",
        *pip,
        f"echo {shlex.quote(mark)} > {venv}/{READY_MARK}",
    ]


def _ship_wheel(prefix: str, wheel: Path) -> str:
    """Podium's wheel always comes from the control machine, which keeps each release's (a
    bundle holds one); returns its path on the node. Sending it restarts nothing: the venv's
    folder names its build."""
    remote = f"{prefix}/{wheel.name}"
    files.put(name="Ship Podium's wheel", src=str(wheel), dest=remote)
    return remote


def _install_from_control_machine(prefix: str, venv: str, wheel: Path) -> list[OperationMeta]:
    """Podium's own wheel and its pinned requirements come from the control machine: the
    gateway node needs no package index."""
    requirements = node_versions().components["gateway"].requirements
    house = wheelhouse("gateway", requirements)
    shipped_house = folders.shipped(
        name="Ship the gateway's wheels", src=str(house), dest=f"{prefix}/wheels", delete=True
    )
    remote = _ship_wheel(prefix, wheel)
    # The wheelhouse (named by its pins); the venv's folder names the build, so a kept venv
    # whose mark still matches is used again as it is.
    mark, installed = house.name, checks.venv_mark(venv)
    install = server.shell(
        name=f"Install the gateway into {venv}",
        commands=_install_commands(venv, mark, [
            f"{venv}/bin/pip install -q --no-index --find-links {prefix}/wheels "
            f"-r {prefix}/wheels/requirements.txt",
            f"{venv}/bin/pip install -q --no-index --no-deps {remote}",
        ]),
        _if=lambda: installed != mark,
    )
    return [shipped_house, install]


def _install_from_mirror(mirror: dict, prefix: str, venv: str, wheel: Path) -> list[OperationMeta]:
    """The gateway's wheelhouse of the bundle, from the stack's mirror by its lock's hashes; the
    lock's digest, kept on the node, says when to install again."""
    text = locks_mark(Path(host.data.podium_bundle), ["gateway"])
    locks = files.put(name="The gateway's wheel locks", src=StringIO(text), dest=f"{prefix}/bundle-locks", mode="644")
    mark, installed = hashlib.sha256(text.encode()).hexdigest()[:16], checks.venv_mark(venv)
    remote = _ship_wheel(prefix, wheel)
    pip = f"{venv}/bin/pip"
    install = server.shell(
        name=f"Install the gateway into {venv} from the mirror's wheelhouse",
        commands=_install_commands(venv, mark, [
            pip_from_mirror(pip, mirror, "gateway"),
            f"{pip} install -q --no-index --no-deps {remote}",
        ]),
        _if=lambda: installed != mark,
    )
    return [locks, install]


@operation()
def declared_keys(stack: str, url: str, keys: list[dict], teams: list[dict]) -> Generator[FunctionCommand, None, None]:
    """Create, update and revoke keys so the gateway holds what the stack declares; a gateway
    that already does is left alone.

    + stack: the stack's name (its admin token and kept key secrets)
    + url: the gateway, e.g. https://10.77.0.10:8443
    + keys: the stack's gateway.keys entries
    + teams: the stack's gateway.teams entries
    """
    try:
        changes = declared_key_changes(stack, url, keys, teams=teams)
    except (PodiumError, OSError):
        # Not answering yet (a first run asks before the gateway starts): ask again when it runs.
        changes = None
    if changes == []:
        host.noop(f"the gateway's API keys are those declared ({', '.join(k['name'] for k in keys)})")
        return
    yield FunctionCommand(reconcile_declared_keys, (stack, url, keys, teams), {})


def gateway_url_for(address: str, settings: dict) -> str:
    return f"{'https' if settings['tls'] else 'http'}://{address}:{settings['port']}"


@pyinfra_deploy("gateway: check", data_defaults=DEFAULTS)
def check() -> None:
    checks.passes(name="Gateway runs", commands=["systemctl is-active podium-gateway"],
                  proves="podium-gateway active")
    if "floating" in host.data.podium_gateway:
        floating.check(host.data.podium_gateway)


@pyinfra_deploy("gateway: remove", data_defaults=DEFAULTS)
def remove() -> None:
    if checks.output(f"test -e {floating.CONF} && echo held") == "held":
        floating.release_the_address()
    # The socket first: while it is held, a client connecting would start the gateway again.
    systemd.service(name="Release the gateway's API port", service="podium-gateway.socket", running=False,
                    enabled=False)
    systemd.service(name="Stop the gateway", service="podium-gateway", running=False, enabled=False)
    for unit in ("podium-gateway.service", "podium-gateway.socket"):
        files.file(name=f"Remove {unit}", path=f"/etc/systemd/system/{unit}", present=False)
    files.directory(name="Remove the gateway program", path=host.data.gateway_prefix, present=False)
    # The usage records in gateway_data stay: metering is kept even when a gateway moves.
