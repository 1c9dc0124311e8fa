"""Role store, its verbs: deploy, check, remove. PostgreSQL from Debian for the gateways that
share keys, limits and usage: TLS with the stack CA, one scram account, reachable from the
gateway nodes alone, dumped nightly."""

import shlex
from io import StringIO

from pyinfra import host
from pyinfra.api import deploy as pyinfra_deploy
from pyinfra.operations import apt, files, server, systemd
from pyinfra.operations.util import any_changed

from podium.files import files_for
from podium.pinned import node_versions
from podium.registry.ca import server_certificate
from roles import checks
from roles.store import accounts
from roles.store.defaults import DEFAULTS

PACKAGES = ["postgresql-15", "postgresql-client-15", "postgresql-common", "postgresql-client-common"]
DUMP_UNIT = "podium-store-dump"


def _service() -> str:
    return f"postgresql@{host.data.store_cluster.replace('/', '-')}"


def _psql(sql: str) -> str:
    """psql as the administrator over the local socket, one query, bare output."""
    return f"runuser -u postgres -- psql -XtAq -v ON_ERROR_STOP=1 -c {shlex.quote(sql)}"


def _has_database(database: str) -> str:
    """A command that prints 1 where the database exists."""
    return _psql(f"SELECT 1 FROM pg_database WHERE datname = '{database}'")


@pyinfra_deploy("store: deploy", data_defaults=DEFAULTS)
def deploy() -> None:
    settings = host.data.podium_store
    stack = host.data.podium_stack
    rendered = files_for("store", host.name, settings)
    etc, conf, dumps = host.data.store_etc, f"/etc/postgresql/{host.data.store_cluster}", host.data.store_dumps

    # Debian makes and starts the cluster as the package installs.
    apt.packages(name="Install PostgreSQL", packages=node_versions().pinned("store", PACKAGES), update=True,
                 cache_time=24 * 3600)
    files.directory(name=f"Folder {etc}", path=etc, user="root", group="postgres", mode="750")
    # The gateways connect with sslmode=verify-full: the certificate names the node's address.
    cert, key = server_certificate(stack, f"store-{host.name}", [settings["address"]], [host.name])
    tls = [
        files.put(name="Store certificate", src=str(cert), dest=f"{etc}/tls.crt", mode="644"),
        files.put(name="Store key", src=str(key), dest=f"{etc}/tls.key", user="postgres", group="postgres",
                  mode="600"),
    ]
    config = files.put(name="PostgreSQL settings for the gateways", src=StringIO(rendered["podium.conf"]),
                       dest=f"{conf}/conf.d/podium.conf", mode="644")
    hba = files.put(name="Who may connect (pg_hba)", src=StringIO(rendered["pg_hba.conf"]),
                    dest=f"{conf}/pg_hba.conf", user="postgres", group="postgres", mode="640")
    # Listening addresses and TLS files are read at start only: restart rather than reload.
    systemd.service(name="Restart PostgreSQL after its settings changed", service=_service(), running=True,
                    enabled=True, restarted=True, _if=any_changed(config, hba, *tls))
    systemd.service(name="Run PostgreSQL", service=_service(), running=True, enabled=True)

    # The SQL holds the verifier, not the password; 0600 to the administrator all the same.
    sql = files.put(
        name="The gateways' account and database",
        src=StringIO(accounts.account_sql(settings["database"], settings["user"],
                                          accounts.stack_verifier(stack))),
        dest=f"{etc}/account.sql", user="postgres", group="postgres", mode="600",
    )
    exists = checks.output(_has_database(settings["database"])) == "1"
    server.shell(
        name="Make the account and set its password",
        commands=[f"runuser -u postgres -- psql -Xq -v ON_ERROR_STOP=1 -f {etc}/account.sql"],
        _if=lambda: sql.did_change() or not exists,
    )

    files.directory(name="Folder for the store's dumps", path=dumps, user="postgres", group="postgres",
                    mode="700")
    files.put(name="The dump script", src=StringIO(rendered["podium-store-dump"]),
                       dest="/usr/local/sbin/podium-store-dump", mode="755")
    units = [
        files.put(name=f"Write {name}", src=StringIO(rendered[name]), dest=f"/etc/systemd/system/{name}",
                  mode="644")
        for name in (f"{DUMP_UNIT}.service", f"{DUMP_UNIT}.timer")
    ]
    systemd.daemon_reload(name="Reload systemd for the dump units", _if=any_changed(*units))
    systemd.service(name="Dump the store nightly", service=f"{DUMP_UNIT}.timer", running=True, enabled=True)


@pyinfra_deploy("store: check", data_defaults=DEFAULTS)
def check() -> None:
    settings = host.data.podium_store
    checks.passes(
        name="PostgreSQL runs with TLS and the gateways' database",
        commands=[
            f"systemctl is-active {_service()} {DUMP_UNIT}.timer",
            f"test \"$({_psql('SHOW ssl')})\" = on",
            f"test \"$({_has_database(settings['database'])})\" = 1",
        ],
        proves=f"{_service()} and the nightly dump timer active, ssl on, database {settings['database']} present",
    )


@pyinfra_deploy("store: remove", data_defaults=DEFAULTS)
def remove() -> None:
    """Stop serving the gateways; the data and the dumps stay on the node."""
    systemd.service(name="Stop the dump timer", service=f"{DUMP_UNIT}.timer", running=False, enabled=False)
    for path in (f"/etc/systemd/system/{DUMP_UNIT}.service", f"/etc/systemd/system/{DUMP_UNIT}.timer",
                 "/usr/local/sbin/podium-store-dump",
                 f"/etc/postgresql/{host.data.store_cluster}/conf.d/podium.conf"):
        files.file(name=f"Remove {path}", path=path, present=False)
    systemd.daemon_reload(name="Reload systemd")
    systemd.service(name="Stop PostgreSQL", service=_service(), running=False, enabled=False)
