"""Role monitoring, its verbs: deploy, check, remove."""

from io import StringIO
from typing import Any

from pyinfra import host
from pyinfra.api import deploy as pyinfra_deploy
from pyinfra.api.exceptions import DeployError
from pyinfra.api.operation import OperationMeta
from pyinfra.facts.deb import DebPackages
from pyinfra.operations import apt, files, server, systemd
from pyinfra.operations.util import any_changed

from podium.bundle.artifact_urls import artifact_url
from podium.files import files_for
from podium.monitoring import role_files as rf
from podium.pinned import node_versions, pinned_artifact, pinned_key, recorded_sha256
from podium.stack.types import FROM_BUNDLE
from podium.stack.versions import VersionTable
from roles import checks
from roles.monitoring.defaults import DEFAULTS


def pinned(names: list[str]) -> list[str]:
    """`name=version` for each package, from the monitoring entry of stacks/versions.yaml at the
    host's monitoring version."""
    return node_versions().pinned("monitoring", names)


def _put(rendered: dict[str, str], path: str, mode: str = "644") -> OperationMeta:
    return files.put(
        name=f"Write /{path}",
        src=StringIO(rendered[path]),
        dest=f"/{path}",
        mode=mode,
        create_remote_dir=True,
    )


@pyinfra_deploy("monitoring: deploy", data_defaults=DEFAULTS)
def deploy() -> None:
    settings = host.data.podium_monitoring
    rendered = files_for("monitoring", host.name, settings)

    apt.packages(
        name="Install the node exporter",
        packages=pinned(host.data.monitoring_node_packages),
        update=True,
        cache_time=24 * 3600,
        # Its recommended collectors pull in smartmontools and timers an appliance does not need.
        no_recommends=True,
    )
    exporter = _put(rendered, rf.NODE_EXPORTER_DEFAULTS)
    systemd.service(
        name="Restart the node exporter after its flags changed",
        service="prometheus-node-exporter",
        running=True,
        restarted=True,
        _if=exporter.did_change,
    )
    systemd.service(
        name="Keep the node exporter running",
        service="prometheus-node-exporter",
        running=True,
        enabled=True,
    )

    if settings["gpu"]:
        _dcgm_exporter(settings, rendered)
    if settings["server"]:
        _prometheus(rendered)
        _alertmanager(rendered)
        if settings["grafana_repository"]:
            _grafana(settings, rendered)
        else:
            host.noop(
                f"monitoring: stack {settings['stack']} names no monitoring.grafana_repository, "
                "so Grafana is skipped; Prometheus and Alertmanager run without it"
            )


def _prometheus(rendered: dict[str, str]) -> None:
    apt.packages(
        name="Install Prometheus and Alertmanager",
        packages=pinned(host.data.monitoring_server_packages),
        no_recommends=True,
    )
    flags = _put(rendered, rf.PROMETHEUS_DEFAULTS)
    config = _put(rendered, rf.PROMETHEUS_CONFIG)
    rules = _put(rendered, rf.ALERT_RULES)
    changed = any_changed(flags, config, rules)
    # promtool also checks the rule files the configuration names.
    server.shell(
        name="Check the Prometheus configuration and rules",
        commands=[f"promtool check config /{rf.PROMETHEUS_CONFIG}"],
        _if=changed,
    )
    systemd.service(
        name="Restart Prometheus after its flags changed",
        service="prometheus",
        running=True,
        restarted=True,
        _if=flags.did_change,
    )
    systemd.service(
        name="Reload Prometheus after its configuration or rules changed",
        service="prometheus",
        running=True,
        reloaded=True,
        _if=lambda: (config.did_change() or rules.did_change()) and not flags.did_change(),
    )
    systemd.service(name="Keep Prometheus running", service="prometheus", running=True, enabled=True)


def _alertmanager(rendered: dict[str, str]) -> None:
    flags = _put(rendered, rf.ALERTMANAGER_DEFAULTS)
    config = _put(rendered, rf.ALERTMANAGER_CONFIG)
    server.shell(
        name="Check the Alertmanager configuration",
        commands=[f"amtool check-config /{rf.ALERTMANAGER_CONFIG}"],
        _if=any_changed(flags, config),
    )
    systemd.service(
        name="Restart Alertmanager after its flags changed",
        service="prometheus-alertmanager",
        running=True,
        restarted=True,
        _if=flags.did_change,
    )
    systemd.service(
        name="Reload Alertmanager after its configuration changed",
        service="prometheus-alertmanager",
        running=True,
        reloaded=True,
        _if=lambda: config.did_change() and not flags.did_change(),
    )
    systemd.service(
        name="Keep Alertmanager running",
        service="prometheus-alertmanager",
        running=True,
        enabled=True,
    )


def dcgm_exporter_url(settings: dict[str, Any], table: VersionTable) -> str:
    """Where a GPU node fetches dcgm-exporter: the bundle's slot, or the site mirror's path."""
    url = artifact_url(settings["artifact_mirror"], settings.get("mirror_form"), table, "monitoring",
                       "dcgm-exporter")
    if url is None:
        raise DeployError(f"monitoring: stack {settings['stack']} names no artifact_mirror to fetch "
                          "dcgm-exporter from; set one")
    return url


def _dcgm_exporter(settings: dict[str, Any], rendered: dict[str, str]) -> None:
    mirror = settings["artifact_mirror"]
    if not mirror:
        host.noop(
            f"monitoring: {host.name} has GPUs but stack {settings['stack']} names no "
            "artifact_mirror to fetch dcgm-exporter from; its dcgm scrape target will show down "
            "until one is set"
        )
        return
    table = node_versions()
    url = dcgm_exporter_url(settings, table)
    # Refused before anything is installed: an unrecorded digest would let the mirror choose
    # what runs next to the GPUs.
    sha256 = recorded_sha256(table, "monitoring", "dcgm-exporter", url)
    apt.packages(
        name="Install NVIDIA DCGM and the tools to fetch and check dcgm-exporter",
        packages=[*host.data.monitoring_dcgm_packages, *pinned(["curl"])],
        no_recommends=True,
    )
    systemd.service(name="Run the DCGM host engine", service="nvidia-dcgm", running=True, enabled=True)
    server.group(name="DCGM exporter group", group=rf.DCGM_USER, system=True)
    server.user(name="DCGM exporter user", user=rf.DCGM_USER, group=rf.DCGM_USER, system=True,
                home="/nonexistent", create_home=False, shell="/usr/sbin/nologin")
    fetched = pinned_artifact("dcgm-exporter", url, rf.DCGM_BINARY, sha256)
    binary = [fetched] if fetched is not None else []
    counters = _put(rendered, rf.DCGM_COUNTERS)
    unit = _put(rendered, rf.DCGM_UNIT)
    systemd.daemon_reload(name="Reload systemd for the DCGM exporter unit", _if=unit.did_change)
    systemd.service(
        name="Restart the DCGM exporter after it changed",
        service="podium-dcgm-exporter",
        running=True,
        restarted=True,
        _if=any_changed(*binary, counters, unit),
    )
    systemd.service(
        name="Keep the DCGM exporter running",
        service="podium-dcgm-exporter",
        running=True,
        enabled=True,
    )


def grafana_deb_url(settings: dict[str, Any], table: VersionTable) -> str:
    """Where a bundle stack's monitoring node fetches Grafana's .deb: the bundle's grafana slot."""
    url = artifact_url(settings["artifact_mirror"], settings.get("mirror_form"), table, "monitoring", "grafana")
    if url is None or settings.get("mirror_form") != "bundle":
        raise DeployError(f"monitoring: stack {settings['stack']} takes Grafana from a bundle but serves "
                          "none; set artifact_mirror: {bundle: PATH}")
    return url


def _grafana_from_bundle(settings: dict[str, Any]) -> None:
    table = node_versions()
    url = grafana_deb_url(settings, table)
    # Refused before anything is installed, as dcgm-exporter is: the operator records the
    # digest of the .deb they dropped into the slot.
    sha256 = recorded_sha256(table, "monitoring", "grafana", url)
    # Its dependencies from the bundle's apt repository first, so dpkg finds them in place.
    depends = [f"{p}={v}" for p, v in sorted(table.extra("monitoring")["grafana_packages"].items())]
    apt.packages(name="Grafana's dependencies", packages=depends, no_recommends=True)
    deb = f"{rf.GRAFANA_DEB_DIR}/{url.rsplit('/', 1)[-1]}"
    files.directory(name="Folder for Grafana's package", path=rf.GRAFANA_DEB_DIR, mode="755")
    fetched = pinned_artifact("grafana", url, deb, sha256, mode="644")
    wanted = table.extra("monitoring")["grafana"]
    if fetched is not None or wanted not in (host.get_fact(DebPackages).get("grafana") or ()):
        server.shell(name=f"Install Grafana {wanted} from the bundle", commands=[f"dpkg -i {deb}"])


def _grafana(settings: dict[str, Any], rendered: dict[str, str]) -> None:
    if settings["grafana_repository"] == FROM_BUNDLE:
        _grafana_from_bundle(settings)
    else:
        url, _ = rf.grafana_source(settings["grafana_repository"])
        files.directory(name="Folder for apt keyrings", path="/etc/apt/keyrings", mode="755")
        apt.packages(name="Tools to fetch and check apt keys", packages=pinned(["curl", "gpg"]), no_recommends=True)
        # Checked against its fingerprint in stacks/versions.yaml before apt trusts the repository.
        fingerprint = node_versions().components["monitoring"].keys["podium-grafana.asc"].fingerprint
        key = pinned_key("podium-grafana.asc", f"{url}/{host.data.monitoring_grafana_key}", rf.GRAFANA_KEYRING,
                         fingerprint)
        source = _put(rendered, rf.GRAFANA_SOURCE)
        apt.update(name="Read the Grafana repository", _if=any_changed(*([key] if key else []), source))
        # Grafana's own repository, so its pin is the table's `grafana` entry, not a Debian one.
        grafana = f"grafana={node_versions().extra('monitoring')['grafana']}"
        apt.packages(name="Install Grafana", packages=[grafana], no_recommends=True)
    provisioned = [
        _put(rendered, path)
        for path in sorted(rendered)
        if path.startswith((rf.GRAFANA_PROVISIONING, rf.GRAFANA_DASHBOARDS))
    ]
    # The admin password is the stack's secret (made once, 0600 on the control machine); Grafana
    # reads it from a file only it and root can read, never from a unit or a command line.
    password = files.put(
        name="Grafana admin password",
        src=StringIO(rf.grafana_admin_password(settings["stack"]) + "\n"),
        dest=rf.GRAFANA_PASSWORD_FILE,
        user="root",
        group="grafana",
        mode="640",
    )
    dropin = _put(rendered, rf.GRAFANA_DROPIN)
    systemd.daemon_reload(name="Reload systemd for the Grafana drop-in", _if=dropin.did_change)
    systemd.service(
        name="Restart Grafana after its provisioning changed",
        service="grafana-server",
        running=True,
        restarted=True,
        _if=any_changed(dropin, password, *provisioned),
    )
    systemd.service(name="Keep Grafana running", service="grafana-server", running=True, enabled=True)
    # Grafana takes the password file only when it first creates its database: set it on the
    # running one too, through stdin so it never shows in a process list.
    server.shell(
        name="Grafana's admin account has the stack's password",
        commands=[
            "grafana-cli --homepath /usr/share/grafana admin reset-admin-password --password-from-stdin "
            f"< {rf.GRAFANA_PASSWORD_FILE}"
        ],
        _if=password.did_change,
    )


@pyinfra_deploy("monitoring: check", data_defaults=DEFAULTS)
def check() -> None:
    settings = host.data.podium_monitoring
    units = ["prometheus-node-exporter"]
    if settings["server"]:
        units += ["prometheus", "prometheus-alertmanager"]
    checks.passes(name="Monitoring services are running", commands=[f"systemctl is-active {' '.join(units)}"],
                  proves=f"{', '.join(units)} active")


@pyinfra_deploy("monitoring: remove", data_defaults=DEFAULTS)
def remove() -> None:
    server.shell(
        name="Stop the DCGM exporter and Grafana if present",
        commands=[
            "systemctl disable --now podium-dcgm-exporter grafana-server 2>/dev/null || true",
        ],
    )
    for path in (
        rf.DCGM_UNIT,
        rf.DCGM_COUNTERS,
        rf.GRAFANA_SOURCE,
        rf.GRAFANA_DROPIN,
        rf.PROMETHEUS_DEFAULTS,
        rf.ALERTMANAGER_DEFAULTS,
        rf.NODE_EXPORTER_DEFAULTS,
    ):
        files.file(name=f"Remove /{path}", path=f"/{path}", present=False)
    files.file(name="Remove dcgm-exporter", path=rf.DCGM_BINARY, present=False)
    systemd.daemon_reload(name="Reload systemd after removing units")
    apt.packages(
        name="Remove Prometheus, Alertmanager and the node exporter",
        packages=[*host.data.monitoring_server_packages, *host.data.monitoring_node_packages],
        present=False,
    )
