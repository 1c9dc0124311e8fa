"""Steps every engine role shares: registry access and model pulls on the node, a venv from an
offline wheelhouse, one unit per replica restarted only when its own files changed, and removal
of replicas the stack no longer declares."""

from __future__ import annotations

import shlex
from collections.abc import Mapping, Sequence
from io import StringIO
from pathlib import Path
from typing import Any

from pyinfra import host
from pyinfra.api.exceptions import DeployError
from pyinfra.api.operation import OperationMeta
from pyinfra.facts.files import FindFiles
from pyinfra.facts.server import Command
from pyinfra.operations import apt, files, server, systemd
from pyinfra.operations.util import any_changed

import podium
from podium import engine_files
from podium.bundle.wheels import locks_mark, pip_from_mirror
from podium.files import files_for
from podium.pinned import node_versions
from podium.services import model_pull
from roles import checks, folders

PULL_TOOL = "/usr/local/sbin/podium-model-pull"
# The engines' own folder: the registry role keeps its TLS and accounts in /etc/podium/registry
# (readable by nginx) and removes it with the registry, so a node serving both keeps them apart.
REGISTRY_DIR = "/etc/podium/model-pull"
# Where this folder was before: its files go, whatever the registry keeps there stays.
OLD_ACCESS_FILES = ("/etc/podium/registry/ca.pem", "/etc/podium/registry/pull.auth")
CA_FILE = f"{REGISTRY_DIR}/ca.pem"
AUTH_FILE = f"{REGISTRY_DIR}/pull.auth"
WHEELS_DIR = "/opt/podium/wheels"
WHEELHOUSES_DIR = "/opt/podium/wheelhouses"
READY_MARK = checks.VENV_MARK
ENGINE_HOME = "/var/lib/podium/engines"
# Podium's MLServer runtimes (skops, ONNX), the signature reader they use and the two
# import-free package files they need, shipped as-is.
RUNTIME_FILES = {
    "podium/__init__.py": Path(podium.__file__),
    "podium/services/__init__.py": Path(model_pull.__file__).with_name("__init__.py"),
    "podium/services/mlserver_skops.py": Path(model_pull.__file__).with_name("mlserver_skops.py"),
    "podium/services/mlserver_onnx.py": Path(model_pull.__file__).with_name("mlserver_onnx.py"),
    "podium/services/model_signature.py": Path(model_pull.__file__).with_name("model_signature.py"),
}


def checked_settings(kind: str, settings: Mapping[str, Any]) -> dict[str, Any]:
    """The settings to deploy, refused before touching the node when they cannot run (args Podium
    owns, no registry); models the plan left unresolved (a plain `pyinfra` run of an inventory
    written before the models were pushed) are looked up in the registry by version."""
    if settings["replicas"] and not settings.get("registry"):
        raise DeployError(
            f"{host.name}: engines pull their models from the registry; add `registry:` to the stack"
        )
    out = {**settings, "replicas": [dict(r) for r in settings["replicas"]]}
    for replica in out["replicas"]:
        what = f"engine {replica['engine']} replica {replica['replica']} on {host.name}"
        owned = engine_files.owned_args_given(kind, replica)
        if owned:
            raise DeployError(
                f"{what}: args {', '.join(owned)} are set by Podium; remove them from the engine's args"
            )
        if not replica.get("model_digest"):
            replica["model_digest"] = _registry_digest(settings["registry"]["url"], replica, what)
        adapter = replica.get("adapter")
        if adapter and not adapter.get("model_digest"):
            replica["adapter"] = {**adapter, "model_digest": _registry_digest(
                settings["registry"]["url"], adapter, f"{what} (adapter)")}
    return out


def _registry_digest(url: str, replica: Mapping[str, Any], what: str) -> str:
    """The digest the registry holds for the replica's model version (read with the pull account)."""
    from podium.registry import Registry
    from podium.registry.access import pull_credential, registry_ca

    stack = host.data.podium_stack
    credential = pull_credential(stack)
    tls = url.startswith("https://")
    registry = Registry(url.split("://", 1)[1], insecure=not tls, ca=registry_ca(stack) if tls else None,
                        user=credential.user, password=credential.password)
    repository = engine_files.weights_repository(replica)
    tags = {t.tag: t.digest for t in registry.tags(repository)}
    digest = tags.get(replica["model_version"])
    if digest is None:
        raise DeployError(
            f"{what}: model {repository}:{replica['model_version']} is not in the registry; "
            "run `podium up` so the stack's models are pushed first"
        )
    return digest


def base_packages(component: str, extra: Sequence[str] = ()) -> None:
    apt.packages(
        name="Packages engines need (python3-venv, curl)",
        # At the versions stacks/versions.yaml pins for the engine, the ones a bundle carries.
        packages=node_versions().pinned(component, ["python3-venv", "curl", *extra]),
        cache_time=24 * 3600,
        update=True,
    )
    server.group(name=f"Group {engine_files.ENGINE_USER}", group=engine_files.ENGINE_USER, system=True)
    server.user(
        name=f"Engine user {engine_files.ENGINE_USER}",
        user=engine_files.ENGINE_USER,
        group=engine_files.ENGINE_USER,
        system=True,
        shell="/usr/sbin/nologin",
        home=ENGINE_HOME,
        create_home=False,
        _if=lambda: not checks.user_as_declared(
            engine_files.ENGINE_USER, engine_files.ENGINE_USER, ENGINE_HOME, "/usr/sbin/nologin"
        ),
    )


def registry_access(settings: Mapping[str, Any]) -> None:
    """The pull tool, the stack CA and the read-only pull account (0600, root only)."""
    from podium.registry.access import pull_credential, registry_ca

    stack = host.data.podium_stack
    files.put(name="Model pull tool", src=str(model_pull.__file__), dest=PULL_TOOL, mode="755")
    files.directory(name="Registry access folder", path=REGISTRY_DIR, mode="700")
    for old in OLD_ACCESS_FILES:
        files.file(name=f"No pull access left in {old}", path=old, present=False)
    if settings["registry"]["url"].startswith("https://"):
        files.put(name="Stack CA for the registry", src=str(registry_ca(stack)), dest=CA_FILE, mode="644")
    credential = pull_credential(stack)
    files.put(
        name="Registry pull account",
        src=StringIO(f"{credential.user}:{credential.password}\n"),
        dest=AUTH_FILE,
        mode="600",
    )


def pull_models(settings: Mapping[str, Any], link_weights: bool) -> None:
    """Pull each digest the replicas serve that the node lacks (and its weights link)."""
    url = settings["registry"]["url"]
    done: set[str] = set()
    # An adapter model's replica pulls its base's weights and its adapter, each as a model.
    pulls = [p for r in settings["replicas"] for p in [r, r.get("adapter")] if p]
    for replica in pulls:
        digest = replica["model_digest"]
        if digest in done:
            continue
        done.add(digest)
        folder = engine_files.model_dir(replica)
        link = engine_files.weights_link(replica)
        probe = f"test -d {shlex.quote(folder)}"
        if link_weights:
            probe += f" && test -e {shlex.quote(link)}"
        present = host.get_fact(Command, command=f"{probe} && echo present || echo missing")
        if present == "present":
            continue
        repository = engine_files.weights_repository(replica)
        command = [PULL_TOOL, "--registry", url, "--repository", f"models/{repository}",
                   "--digest", digest, "--root", engine_files.MODELS, "--auth-file", AUTH_FILE]
        if url.startswith("https://"):
            command += ["--ca", CA_FILE]
        if link_weights:
            command += ["--link", link]
        server.shell(
            name=f"Pull model {repository}:{replica['model_version']} ({digest[:19]})",
            commands=[shlex.join(command)],
        )


def ship_wheelhouse(folder: Path) -> str:
    """Copy a wheelhouse built on the control machine to the node; returns its path there."""
    dest = f"{WHEELHOUSES_DIR}/{folder.name}"
    folders.shipped(name=f"Wheelhouse {folder.name}", src=str(folder), dest=dest)
    return dest


def venv_from_wheelhouse(venv: str, wheelhouse: str, requirements: Sequence[str], what: str,
                         every_wheel: bool = False) -> None:
    """A venv installed offline from the node's copy of a wheelhouse; rebuilt when the pins change.

    `every_wheel` installs the folder's wheels as they are, unresolved: for a wheelhouse that
    left out distributions its requirements declare (see podium.artifacts.wheelhouse)."""
    mark = f"{wheelhouse.rsplit('/', 1)[-1]} {' '.join(sorted(requirements))}"
    if checks.venv_mark(venv) == mark:
        return
    install = (f"--no-deps {wheelhouse}/*.whl" if every_wheel else
               f"--find-links {wheelhouse} {' '.join(shlex.quote(r) for r in requirements)}")
    server.shell(
        name=f"Install {what} into {venv} (offline)",
        commands=[
            f"rm -rf {venv}",
            f"python3 -m venv {venv}",
            f"{venv}/bin/pip install --quiet --disable-pip-version-check --no-index {install}",
            f"echo {shlex.quote(mark)} > {venv}/{READY_MARK}",
        ],
    )


def venv_from_wheel(venv: str, wheel: Path, post: Sequence[str], what: str) -> None:
    """A venv holding one wheel shipped from the control machine (no index, no dependencies)."""
    remote = f"{WHEELS_DIR}/{wheel.name}"
    files.put(name=f"Ship {wheel.name}", src=str(wheel), dest=remote, mode="644")
    if checks.venv_mark(venv) == wheel.name:
        return
    server.shell(
        name=f"Install {what} into {venv}",
        commands=[
            f"rm -rf {venv}",
            f"python3 -m venv {venv}",
            f"{venv}/bin/pip install --quiet --disable-pip-version-check --no-index --no-deps {remote}",
            *post,
            f"echo {shlex.quote(wheel.name)} > {venv}/{READY_MARK}",
        ],
    )


def venv_from_mirror(
    venv: str, mirror: Mapping[str, str], house: str, post: Sequence[str], what: str
) -> None:
    """A venv installed from the bundle's wheelhouse on the mirror, by its lock's hashes; rebuilt
    when the lock changes."""
    mark = locks_mark(Path(host.data.podium_bundle), [house]).strip()
    if checks.venv_mark(venv) == mark:
        return
    server.shell(
        name=f"Install {what} into {venv} from the mirror's wheelhouse {house}",
        commands=[
            f"rm -rf {venv}",
            f"python3 -m venv {venv}",
            pip_from_mirror(f"{venv}/bin/pip", mirror, house),
            *post,
            f"echo {shlex.quote(mark)} > {venv}/{READY_MARK}",
        ],
    )




def point_venv(name: str, venv: str) -> OperationMeta:
    """/opt/podium/<name> → the versioned venv: units name no version; an upgrade flips the link."""
    return files.link(
        name=f"Use {venv}", path=engine_files.VENV_LINK.format(name=name), target=venv, force=True
    )


def runtime_files() -> list[OperationMeta]:
    """Podium's MLServer runtime on the venv's path (PYTHONPATH in the unit)."""
    return [
        files.put(name=f"Podium runtime {rel}", src=str(src), dest=f"{engine_files.RUNTIME_PATH}/{rel}",
                  mode="644")
        for rel, src in RUNTIME_FILES.items()
    ]


def replica_units(
    kind: str,
    settings: Mapping[str, Any],
    restart_all: Sequence[OperationMeta] = (),
    ready_timeout_s: int = 180,
) -> None:
    """Write each replica's files; restart a replica only when its own files (or `restart_all`,
    the engine's binaries) changed, then wait for it to answer its health check."""
    rendered = files_for(f"engine-{kind}", host.name, settings)
    per_unit: dict[str, list[OperationMeta]] = {}
    unit_ops: list[OperationMeta] = []
    for replica in settings["replicas"]:
        unit = engine_files.unit_name(kind, replica)
        mine = [
            path for path in rendered
            if path.endswith(f"/{unit}")
            or (kind == "predictive" and path.startswith(engine_files.predictive_folder(replica) + "/"))
        ]
        ops = []
        for path in sorted(mine):
            op = files.put(name=f"Write /{path}", src=StringIO(rendered[path]), dest=f"/{path}", mode="644")
            ops.append(op)
            if path.endswith(".service"):
                unit_ops.append(op)
        per_unit[unit] = ops
    remove_stale_units(kind, set(per_unit))
    if unit_ops:
        systemd.daemon_reload(name="Reload systemd for engine units", _if=any_changed(*unit_ops))
    for replica in settings["replicas"]:
        unit = engine_files.unit_name(kind, replica)
        restart = systemd.service(
            name=f"Restart {unit} (its files changed)",
            service=unit,
            running=True,
            restarted=True,
            enabled=True,
            _if=any_changed(*per_unit[unit], *restart_all),
        )
        start = systemd.service(name=f"Keep {unit} running", service=unit, running=True, enabled=True)
        path = engine_files.HEALTH_PATH[kind]
        if kind == "predictive":
            path = f"/v2/models/{replica['model']}/ready"
        url = f"http://127.0.0.1:{replica['port']}{path}"
        server.shell(
            name=f"Wait for {unit} to answer {path}",
            commands=[
                f"for i in $(seq {ready_timeout_s}); do curl -fsS -o /dev/null --max-time 2 {url} && exit 0; "
                f"systemctl -q is-active {unit} || break; sleep 1; done; "
                f"journalctl -u {unit} -n 25 --no-pager >&2; exit 1"
            ],
            _if=any_changed(restart, start),
        )


def remove_stale_units(kind: str, keep: set[str]) -> None:
    """Stop and delete units of replicas the stack no longer declares on this host."""
    existing = host.get_fact(
        FindFiles, path="/etc/systemd/system", quote_path=True, maxdepth=1, fname=f"podium-{kind}-*.service"
    ) or []
    stale = sorted(p.rsplit("/", 1)[-1] for p in existing if p.rsplit("/", 1)[-1] not in keep)
    for unit in stale:
        systemd.service(name=f"Stop {unit} (no longer declared)", service=unit, running=False, enabled=False)
        files.file(name=f"Remove {unit}", path=f"/etc/systemd/system/{unit}", present=False)
        if kind == "predictive":
            folder = unit.removeprefix("podium-predictive-").removesuffix(".service")
            files.directory(name=f"Remove MLServer settings of {folder}",
                            path=f"/{engine_files.PREDICTIVE_CONFIG}/{folder}", present=False)
    if stale:
        systemd.daemon_reload(name="Reload systemd after removing engine units")


def remove_all(kind: str, venv_names: Sequence[str]) -> None:
    """The remove verb: every unit of this kind, its venv links and versioned venvs. Models stay:
    other engines on the node may serve them."""
    remove_stale_units(kind, set())
    for name in venv_names:
        link = engine_files.VENV_LINK.format(name=name)
        server.shell(name=f"Remove {link} and its venvs", commands=[f"rm -rf {link} {link}-[0-9]*"])
