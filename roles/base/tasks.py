"""Role base, its verbs: deploy, check, remove."""

from io import StringIO

from pyinfra import host
from pyinfra.api import deploy as pyinfra_deploy
from pyinfra.facts.server import Command
from pyinfra.operations import apt, files, server, systemd
from pyinfra.operations.util import any_changed

from podium.files import files_for
from podium.pinned import node_versions
from podium.registry.ca import ca_certificate
from roles import checks
from roles.base.defaults import APT_TIMERS, DEFAULTS
from roles.base.mirror_sources import only_the_mirror

APT_DOWNGRADES = "/etc/apt/apt.conf.d/50podium-downgrades"
NFTABLES_DROPIN = """\
[Service]
# Root: loading and removing the firewall's table needs CAP_NET_ADMIN; it runs once and exits.
ExecStop=
ExecStop=-/usr/sbin/nft delete table inet podium
"""


def unit_states(output: str) -> dict[str, str]:
    """`unit state` lines → {unit: state}; a unit printed without a state is left out."""
    return {words[0]: words[1] for words in map(str.split, output.splitlines()) if len(words) == 2}


def quiet_apt() -> None:
    """Mask apt's timers and unattended-upgrades (see APT_TIMERS): nothing installed reaches a
    mirror on its own."""
    # `systemctl is-enabled` prints nothing for a unit that is not installed.
    probe = "; ".join(f"echo {u} $(systemctl is-enabled {u} 2>/dev/null)" for u in APT_TIMERS)
    states = unit_states(host.get_fact(Command, command=probe) or "")
    installed = [u for u in APT_TIMERS if states.get(u) not in (None, "masked")]
    absent = [u for u in APT_TIMERS if states.get(u) is None]
    if not installed and not absent:
        host.noop("apt's timers and unattended-upgrades are masked")
        return
    commands = []
    if installed:
        commands.append(f"systemctl mask --now {' '.join(installed)}")
    if absent:
        # Masked before it is installed: the package's own enabling then has no effect.
        commands.append(f"systemctl mask {' '.join(absent)}")
    server.shell(name="Mask apt's timers and unattended-upgrades", commands=commands)


def _in_container() -> bool:
    kind = host.get_fact(Command, command="systemd-detect-virt --container 2>/dev/null || true")
    return bool(kind and kind.strip() not in ("", "none"))


@pyinfra_deploy("base: deploy", data_defaults=DEFAULTS)
def deploy() -> None:
    settings = host.data.podium_base
    rendered = files_for("base", host.name, settings)

    server.hostname(name="Set the hostname", hostname=settings["hostname"])
    files.put(name="Write /etc/hosts", src=StringIO(rendered["hosts"]), dest="/etc/hosts", mode="644")
    stack = host.data.podium_stack
    if settings.get("mirror"):
        sources = only_the_mirror(settings["mirror"], rendered, str(ca_certificate(stack)))
        # cache_time would keep the lists of the sources just replaced.
        apt.update(name="Read the mirror's package lists", _if=any_changed(*sources))
    # Every package is installed at the version the table pins; a rollback lowers pins, which
    # apt refuses under -y unless downgrades are allowed.
    files.put(
        name="Let apt take a lower pinned version",
        src=StringIO('APT::Get::allow-downgrades "true";\n'),
        dest=APT_DOWNGRADES,
        mode="644",
    )
    apt.packages(
        name="Install base packages",
        packages=node_versions().pinned("base", host.data.base_packages),
        update=True,
        cache_time=24 * 3600,
    )
    quiet_apt()

    # Every node trusts the stack's own CA (made once on the control machine), so engines reach
    # the registry, and anything else it signs, over verified TLS.
    ca = files.put(
        name="Trust the stack's CA",
        src=str(ca_certificate(stack)),
        dest=f"/usr/local/share/ca-certificates/podium-{stack}.crt",
        mode="644",
    )
    server.shell(
        name="Update the trust store", commands=["update-ca-certificates"], _if=ca.did_change
    )

    chrony = files.put(
        name="Configure chrony (stack's own time servers only)",
        src=StringIO(rendered["chrony.conf"]),
        dest=host.data.base_chrony_conf,
        mode="644",
    )
    if _in_container():
        # The host owns the clock of a container: chronyd follows the servers without setting it.
        dropin = files.put(
            name="Let chrony run in a container without setting the clock",
            src=StringIO(
                "[Unit]\nConditionCapability=\n[Service]\n"
                "# Root at start: chronyd drops to user _chrony itself once it holds its socket.\n"
                "ExecStart=\n"
                "ExecStart=!/usr/sbin/chronyd $DAEMON_OPTS -x\n"
            ),
            dest="/etc/systemd/system/chrony.service.d/podium.conf",
            mode="644",
            create_remote_dir=True,
        )
        systemd.daemon_reload(name="Reload systemd for the chrony drop-in", _if=dropin.did_change)
        systemd.service(
            name="Restart chrony after its drop-in changed",
            service="chrony",
            running=True,
            restarted=True,
            enabled=True,
            _if=dropin.did_change,
        )
    systemd.service(
        name="Run chrony",
        service="chrony",
        running=True,
        enabled=True,
        restarted=True,
        _if=chrony.did_change,
    )
    systemd.service(name="Keep chrony running", service="chrony", running=True, enabled=True)

    user = settings["admin_user"]
    if user != "root":
        server.user(
            name=f"Admin user {user}",
            user=user,
            groups=["sudo"],
            shell="/bin/bash",
            create_home=True,
            public_keys=host.data.podium_admin_keys,
        )
        files.put(
            name=f"Passwordless sudo for {user}",
            src=StringIO(f"{user} ALL=(ALL) NOPASSWD:ALL\n"),
            dest=f"/etc/sudoers.d/podium-{user}",
            mode="440",
        )
    for key in host.data.podium_admin_keys:
        files.line(name="Admin key for root", path="/root/.ssh/authorized_keys", line=key)

    sshd = files.put(
        name="Harden sshd (keys only)",
        src=StringIO(rendered["sshd_podium.conf"]),
        dest=host.data.base_sshd_dropin,
        mode="644",
    )
    server.shell(name="Check the sshd configuration", commands=["sshd -t"], _if=sshd.did_change)
    systemd.service(name="Reload sshd", service="ssh", running=True, reloaded=True, _if=sshd.did_change)

    nft = files.put(
        name="Write the firewall (default drop, in and out)",
        src=StringIO(rendered["nftables.conf"]),
        dest=host.data.base_nftables_conf,
        mode="755",
    )
    server.shell(
        name="Check the firewall rules",
        commands=[f"nft -c -f {host.data.base_nftables_conf}"],
        _if=nft.did_change,
    )
    # Debian's unit stops with `nft flush ruleset`, so a restart would wipe kube-proxy's and
    # flannel's tables too; stopping removes Podium's table only.
    stop = files.put(
        name="Stopping the firewall removes Podium's table only",
        src=StringIO(NFTABLES_DROPIN),
        dest="/etc/systemd/system/nftables.service.d/podium.conf",
        mode="644",
        create_remote_dir=True,
    )
    systemd.daemon_reload(name="Reload systemd for the nftables drop-in", _if=stop.did_change)
    systemd.service(name="Keep the firewall loaded", service="nftables", running=True, enabled=True)
    # A reload loads the file, which replaces Podium's table and nothing else.
    systemd.service(
        name="Load the changed firewall",
        service="nftables",
        reloaded=True,
        _if=nft.did_change,
    )


@pyinfra_deploy("base: check")
def check() -> None:
    checks.passes(
        name="Firewall, time sync and sshd are running",
        commands=["systemctl is-active nftables chrony ssh", "nft list table inet podium >/dev/null"],
        proves="nftables, chrony and ssh active, Podium's firewall table loaded",
    )


@pyinfra_deploy("base: remove", data_defaults=DEFAULTS)
def remove() -> None:
    files.file(name="Remove the sshd drop-in", path=host.data.base_sshd_dropin, present=False)
    files.file(
        name="Remove the chrony drop-in",
        path="/etc/systemd/system/chrony.service.d/podium.conf",
        present=False,
    )
    # Podium's table goes; tables of others (kube-proxy, flannel) stay.
    files.put(
        name="Open the firewall again",
        src=StringIO("#!/usr/sbin/nft -f\ntable inet podium\ndelete table inet podium\n"),
        dest=host.data.base_nftables_conf,
        mode="755",
    )
    systemd.service(name="Reload the firewall", service="nftables", reloaded=True)
    files.file(
        name="Remove the nftables drop-in",
        path="/etc/systemd/system/nftables.service.d/podium.conf",
        present=False,
    )
    systemd.daemon_reload(name="Reload systemd without the nftables drop-in")
    systemd.service(name="Reload sshd", service="ssh", reloaded=True)
    server.shell(name="Unmask apt's timers and unattended-upgrades",
                 commands=[f"systemctl unmask {' '.join(APT_TIMERS)}"])
