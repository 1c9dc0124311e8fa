"""Role registry, its verbs: deploy, check, remove, and gc (garbage-collect unreferenced blobs)."""

from io import StringIO

from pyinfra import host
from pyinfra.api import deploy as pyinfra_deploy
from pyinfra.operations import apt, files, server, systemd

from podium.files import files_for
from podium.pinned import node_versions
from podium.registry.access import pull_credential, push_credential
from podium.registry.ca import server_certificate
from roles import checks, nginx
from roles.registry import accounts
from roles.registry.defaults import DEFAULTS

GC_UNIT = "podium-registry-gc"


def packages() -> list[str]:
    """docker-registry at the host's registry version and nginx, as stacks/versions.yaml pins them."""
    return node_versions().pinned("registry", ["docker-registry", "nginx"])


@pyinfra_deploy("registry: deploy", data_defaults=DEFAULTS)
def deploy() -> None:
    settings = host.data.podium_registry
    stack = host.data.podium_stack
    rendered = files_for("registry", host.name, settings)
    etc = host.data.registry_etc

    apt.packages(
        name="Install docker-registry and nginx",
        packages=packages(),
        update=True,
        cache_time=24 * 3600,
    )
    files.link(name="No default nginx site", path="/etc/nginx/sites-enabled/default", present=False)

    files.directory(
        name="Registry data folder",
        path=settings["path"],
        user="docker-registry",
        group="docker-registry",
        mode="770",
    )
    config = files.put(
        name="Configure docker-registry",
        src=StringIO(rendered["config.yml"]),
        dest=host.data.registry_config,
        mode="644",
        create_remote_dir=True,
    )
    dropin = files.put(
        name="docker-registry: socket folder, storage mount",
        src=StringIO(rendered["docker-registry.conf"]),
        dest=host.data.registry_dropin,
        mode="644",
        create_remote_dir=True,
    )
    units = [
        files.put(
            name=f"Write {name}",
            src=StringIO(rendered[name]),
            dest=f"/etc/systemd/system/{name}",
            mode="644",
        )
        for name in (f"{GC_UNIT}.service", f"{GC_UNIT}.timer")
    ]
    changed_units = [dropin.did_change] + [u.did_change for u in units]
    systemd.daemon_reload(
        name="Reload systemd for the registry's units", _if=lambda: any(c() for c in changed_units)
    )
    systemd.service(
        name="Restart docker-registry after its configuration changed",
        service="docker-registry",
        running=True,
        enabled=True,
        restarted=True,
        _if=lambda: config.did_change() or dropin.did_change(),
    )
    systemd.service(name="Run docker-registry", service="docker-registry", running=True, enabled=True)
    systemd.service(
        name="Garbage-collect the registry weekly", service=f"{GC_UNIT}.timer", running=True, enabled=True
    )

    # nginx's workers reach the registry's socket as members of its group.
    in_group = "docker-registry" in checks.output("id -nG www-data").split()
    group = server.shell(
        name="nginx may reach the registry's socket",
        commands=["usermod -a -G docker-registry www-data"],
        _if=lambda: not in_group,
    )

    files.directory(name="Registry TLS and accounts folder", path=etc, mode="755")
    tls = []
    if settings["tls"]:
        cert, key = server_certificate(
            stack, "registry", settings["server_addresses"], settings["server_names"]
        )
        tls.append(files.put(name="Registry certificate", src=str(cert), dest=f"{etc}/tls.crt", mode="644"))
        tls.append(files.put(name="Registry key", src=str(key), dest=f"{etc}/tls.key", mode="600"))
    push, pull = push_credential(stack), pull_credential(stack)
    rounds = host.data.registry_bcrypt_rounds
    for name, members in (("htpasswd-pull", [pull, push]), ("htpasswd-push", [push])):
        path = f"{etc}/{name}"
        # Read per request by nginx's workers: readable by www-data only.
        files.put(
            name=f"Registry accounts {name}",
            src=StringIO(accounts.htpasswd(members, checks.output(f"cat {path}"), rounds)),
            dest=path,
            user="root",
            group="www-data",
            mode="640",
        )

    site = files.put(
        name="nginx in front of the registry",
        src=StringIO(rendered["podium-registry.conf"]),
        dest=host.data.registry_nginx_site,
        mode="644",
    )
    nginx.restart_on_change([site, group, *tls], "site, certificate or groups")


@pyinfra_deploy("registry: check", data_defaults=DEFAULTS)
def check() -> None:
    settings = host.data.podium_registry
    scheme = "https" if settings["tls"] else "http"
    url = f"{scheme}://{settings['address']}:{settings['port']}/v2/"
    checks.passes(
        name="docker-registry and nginx run and /v2/ answers",
        commands=[
            "systemctl is-active docker-registry nginx",
            # 401 without an account is the healthy answer; curl checks TLS with the node's
            # trust store.
            f"test $(curl -s -o /dev/null -w '%{{http_code}}' {url}) = 401",
        ],
        proves=f"docker-registry and nginx active, GET {url} answered 401 without an account",
    )


@pyinfra_deploy("registry: gc", data_defaults=DEFAULTS)
def gc() -> None:
    """Free the blobs of deleted model versions now (the registry pauses while it runs)."""
    server.shell(name="Garbage-collect the registry", commands=[f"systemctl start {GC_UNIT}.service"])


@pyinfra_deploy("registry: remove", data_defaults=DEFAULTS)
def remove() -> None:
    """Stop serving; the models stay on the storage path."""
    files.file(name="Remove the nginx site", path=host.data.registry_nginx_site, present=False)
    systemd.service(name="Reload nginx", service="nginx", reloaded=True)
    systemd.service(name="Stop the gc timer", service=f"{GC_UNIT}.timer", running=False, enabled=False)
    systemd.service(name="Stop docker-registry", service="docker-registry", running=False, enabled=False)
    for path in (
        host.data.registry_dropin,
        f"/etc/systemd/system/{GC_UNIT}.service",
        f"/etc/systemd/system/{GC_UNIT}.timer",
    ):
        files.file(name=f"Remove {path}", path=path, present=False)
    files.directory(name="Remove the registry's TLS and accounts", path=host.data.registry_etc, present=False)
    systemd.daemon_reload(name="Reload systemd")
