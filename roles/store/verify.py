"""Role store, proved on the store node and from the gateways: PostgreSQL runs with TLS and the
nightly dump timer, a gateway node's own password file and the stack CA open the database with
sslmode=verify-full, a connection without TLS is refused, a node that is no gateway cannot reach
the port, and a dump run now leaves a dump the format pg_restore reads."""

import shlex

PSQL = "runuser -u postgres -- psql -XtAq -c"
GATEWAY_PYTHON = "/opt/podium/gateway/venv/bin/python"
ETC = "/etc/podium/gateway"


def _dsn(settings, sslmode="verify-full"):
    return (
        f"host={settings['address']} port={settings['port']} dbname={settings['database']} "
        f"user={settings['user']} sslmode={sslmode} sslrootcert={ETC}/ca.crt passfile={ETC}/store.pgpass"
    )


def _connect(gateway, settings, sslmode):
    """Connect from a gateway node as its gateway does: its user, its venv's psycopg, its files."""
    probe = (
        "import psycopg, sys; "
        f"c = psycopg.connect({_dsn(settings, sslmode)!r}, connect_timeout=5); "
        "print(c.execute('SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()').fetchone()[0])"
    )
    return gateway.run(f"runuser -u podium-gateway -- {GATEWAY_PYTHON} -c {shlex.quote(probe)}")


def test_010_postgresql_and_the_dump_timer_run(host):
    assert host.run("systemctl is-active postgresql@15-main").rc == 0, "postgresql@15-main is not active"
    assert host.service("podium-store-dump.timer").is_enabled, "the nightly dump timer is not enabled"
    assert host.check_output(f"{PSQL} 'SHOW ssl'") == "on", "PostgreSQL serves without TLS"


def test_020_listens_on_the_node_address_and_loopback_only(host, settings):
    port = settings["port"]
    listening = host.check_output(f"ss -Hltn 'sport = :{port}' | awk '{{print $4}}'").split()
    allowed = {f"{settings['address']}:{port}", f"127.0.0.1:{port}", f"[::1]:{port}"}
    assert f"{settings['address']}:{port}" in listening and set(listening) <= allowed, (
        f"PostgreSQL listens on {listening}; only {sorted(allowed)} are meant"
    )


def test_030_each_gateway_opens_the_database_over_verified_tls(settings, stack, node):
    for name in stack.gateway.nodes:
        result = _connect(node(name), settings, "verify-full")
        assert result.rc == 0 and result.stdout.strip() == "True", (
            f"gateway node {name} could not open {settings['database']} with sslmode=verify-full: {result.stderr}"
        )


def test_040_a_connection_without_tls_is_refused(settings, stack, node):
    result = _connect(node(stack.gateway.nodes[0]), settings, "disable")
    assert result.rc != 0 and "no pg_hba.conf entry" in result.stderr, (
        f"a connection with sslmode=disable was not refused by pg_hba: rc {result.rc} {result.stderr}"
    )


def test_050_a_node_that_is_no_gateway_cannot_reach_the_port(settings, stack, node):
    others = [n for n in stack.node_names if n not in stack.gateway.nodes and n != stack.gateway.store_node]
    for name in others:
        result = node(name).run(
            f"timeout 3 bash -c '</dev/tcp/{settings['address']}/{settings['port']}'"
        )
        assert result.rc != 0, f"{name} reached {settings['address']}:{settings['port']}, which only gateways may"


def test_060_a_dump_run_now_leaves_a_dump_pg_restore_reads(host, settings):
    started = host.run("systemctl start podium-store-dump.service")
    assert started.rc == 0, f"podium-store-dump.service failed: {started.stderr}"
    newest = host.check_output("ls -1t /var/backups/podium-store/podium-*.dump | head -1")
    listed = host.run(f"runuser -u postgres -- pg_restore --list {shlex.quote(newest)}")
    assert listed.rc == 0 and "TABLE public gateway_usage" in listed.stdout, (
        f"{newest} is not a dump of the gateways' tables"
    )
