"""Role base, proved on each host: names, time sync, keys-only SSH, a default-drop firewall
that lets through exactly the declared ports, in and out, and apt that fetches nothing on its own."""

import shlex

from roles.base.defaults import APT_TIMERS


def test_010_hostname(host, settings):
    assert host.check_output("hostname") == settings["hostname"]


def test_020_hosts_file_names_every_node(host, settings):
    hosts = host.file("/etc/hosts").content_string
    for entry in settings["hosts"]:
        assert f"{entry['address']}\t{entry['name']}" in hosts, f"{entry['name']} missing from /etc/hosts"


def test_030_time_sync_uses_only_the_stacks_servers(host, settings):
    conf = host.file("/etc/chrony/chrony.conf").content_string
    assert "pool " not in conf, "chrony must not use a public pool"
    for server in settings["ntp_servers"]:
        assert f"server {server} iburst" in conf
    assert host.service("chrony").is_running


def test_040_sshd_takes_keys_only(host):
    config = host.check_output("sshd -T")
    assert "passwordauthentication no" in config
    assert "kbdinteractiveauthentication no" in config
    assert host.service("ssh").is_running


def test_050_firewall_drops_by_default(host):
    ruleset = host.check_output("nft list chain inet podium input")
    assert "policy drop" in ruleset
    assert host.service("nftables").is_enabled


def test_055_egress_drops_by_default_and_counts(host):
    """Outbound reaches only what the stack allows; the rest lands on a named counter."""
    output = host.check_output("nft list chain inet podium output")
    assert "policy drop" in output, "the firewall's output chain does not drop by default"
    counter = host.run("nft list counter inet podium egress_dropped")
    assert counter.rc == 0, "the firewall has no egress_dropped counter"


def test_060_declared_ports_are_open_and_others_closed_from_a_peer(host, settings, node, stack):
    """Open a listener on an undeclared port and on SSH's: a peer reaches SSH only."""
    peers = [n.name for n in stack.nodes if n.name != settings["hostname"]]
    if not peers:
        return
    peer = node(peers[0])
    address = settings["address"]
    undeclared = 47999
    declared = {o["port"] for o in settings["openings"]}
    assert undeclared not in declared
    unit = "podium-verify-probe"
    host.run(f"systemctl stop {unit} 2>/dev/null; systemctl reset-failed {unit} 2>/dev/null")
    host.check_output(
        f"systemd-run --unit {unit} --property=RuntimeMaxSec=60 "
        f"python3 -m http.server {undeclared} --bind 0.0.0.0"
    )
    try:
        host.run(f"for i in $(seq 50); do ss -ltn | grep -q ':{undeclared} ' && break; sleep 0.1; done")

        def reach(port: int) -> int:
            probe = f"timeout 3 bash -c {shlex.quote(f'</dev/tcp/{address}/{port}')}"
            return peer.run(probe).rc

        assert host.run(f"timeout 3 bash -c '</dev/tcp/127.0.0.1/{undeclared}'").rc == 0, (
            "probe did not start"
        )
        assert reach(settings["ssh_port"]) == 0, "SSH should be reachable from a peer"
        assert reach(undeclared) != 0, f"undeclared port {undeclared} is reachable from {peers[0]}"
    finally:
        host.run(f"systemctl stop {unit}")


def test_070_trusts_the_stacks_ca(host, stack):
    from podium.registry.ca import ca_certificate

    pem = ca_certificate(stack.name).read_text(encoding="utf-8").strip()
    bundle = host.file("/etc/ssl/certs/ca-certificates.crt").content_string
    assert pem in bundle, f"the CA of stack {stack.name} is not in the node's trust store"


def test_080_apt_fetches_nothing_on_its_own(host):
    """apt's daily timers and unattended-upgrades are masked and stopped: packages change only
    when `podium up` changes them, and no timer reaches a mirror."""
    for unit in APT_TIMERS:
        state = host.run(f"systemctl is-enabled {unit}").stdout.strip() or "not masked (not installed)"
        assert state == "masked", f"{unit} is {state}, not masked: it would reach the apt sources on its own"
        assert not host.service(unit).is_running, f"{unit} is still running"


def test_090_apt_sources_name_only_the_mirror(host, settings):
    """Where the stack serves its bundle, apt on this node reads that mirror and nothing else."""
    mirror = settings.get("mirror")
    if not mirror:
        return
    sites = host.check_output("apt-get indextargets --format '$(SITE)' | sort -u").split()
    assert sites, "apt on this node has no package lists"
    outside = [s for s in sites if not s.startswith(f"{mirror['url']}/apt")]
    assert not outside, f"apt reads {', '.join(outside)} besides the mirror {mirror['url']}"
    listed = host.check_output("grep -rhE '^(deb|URIs)' /etc/apt/sources.list /etc/apt/sources.list.d || true")
    assert listed.splitlines() == [f"deb [signed-by={mirror['keyring']}] {mirror['url']}/apt bookworm main"], listed
