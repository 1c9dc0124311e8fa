"""gateway.address: refused where it cannot float, and otherwise keepalived's files on each
gateway node (VRRP unicast to the other gateway nodes, a check of the local gateway) and the
firewall letting VRRP in from those nodes alone."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml

from podium.errors import InvalidInput
from podium.files import files_for
from podium.plan import make_plan
from podium.render import REPO
from podium.stack import load_stack
from podium.stack.model import Stack
from podium.stack.versions import load_versions

LABSTORE = REPO / "tests" / "stacks" / "labstore"


def settings_of(stack: Stack, component: str, host: str) -> dict[str, Any]:
    actions = make_plan(stack, load_versions())
    return dict(next(a.settings for a in actions if a.component == component and a.host == host))


def with_gateway(tmp_path: Path, **changes: Any) -> Path:
    """The labstore stack with its gateway section changed, written to tmp_path."""
    data = yaml.safe_load((LABSTORE / "stack.yaml").read_text())
    data["gateway"].update(changes)
    path = tmp_path / "stack.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"address": "10.77.19.11"}, "gateway.address = '10.77.19.11': is node node1's own address"),
        ({"address": "10.77.20.20"}, "gateway.address = '10.77.20.20': must be a free host address in"
                                     " host_network.subnet 10.77.19.0/24"),
        ({"address": "10.77.19.1"}, "gateway.address = '10.77.19.1': must be a free host address"),
        ({"address": "10.77.19.20", "nodes": ["ctrl"], "store": "sqlite"},
         "gateway.address = '10.77.19.20': needs two or more gateway nodes"),
        ({"address": "gateway.lan"}, "gateway.address"),
    ],
    ids=["a-node-address", "outside-the-subnet", "the-subnet-gateway", "one-gateway-node", "not-an-address"],
)
def test_a_gateway_address_that_cannot_float_is_refused_naming_field_and_value(
    tmp_path: Path, changes: dict[str, Any], message: str
) -> None:
    path = with_gateway(tmp_path, **changes)
    with pytest.raises(InvalidInput) as caught:
        load_stack(path)
    text = str(caught.value)
    assert len(text.splitlines()) == 1 and message in text, text


def test_podium_validate_exits_2_on_a_node_address_without_a_traceback(tmp_path: Path) -> None:
    path = with_gateway(tmp_path, address="10.77.19.10")
    result = subprocess.run([sys.executable, "-m", "podium", "validate", str(path)], capture_output=True,
                            text=True, cwd=REPO)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr and "is node ctrl's own address" in result.stderr, result.stderr


def test_each_gateway_node_gets_keepalived_with_unicast_to_the_other() -> None:
    stack = load_stack(LABSTORE)
    confs = {}
    for host, own, peer, priority in (("ctrl", "10.77.19.10", "10.77.19.11", 200),
                                      ("node1", "10.77.19.11", "10.77.19.10", 190)):
        files = files_for("gateway", host, settings_of(stack, "gateway", host))
        conf = files["keepalived/keepalived.conf"]
        lines = [line.strip() for line in conf.splitlines()]
        for wanted in (f"unicast_src_ip {own}", peer, f"priority {priority}", "virtual_router_id 20",
                       "10.77.19.20/32 dev host0", "state BACKUP", "nopreempt", "local_gateway",
                       "script_user podium-gateway podium-gateway", "enable_script_security"):
            assert wanted in lines, f"{host}: {wanted!r} missing from keepalived.conf:\n{conf}"
        # The node itself is no peer of its own.
        assert own not in [line for line in lines if line and line[0].isdigit() and "/" not in line]
        health = files["keepalived/podium-gateway-health"]
        # A killed gateway gives the address up at the next check, not after curl's timeout.
        assert "systemctl is-active --quiet podium-gateway || exit 1" in health, health
        assert health.startswith("#!/bin/sh") and (
            f"--cacert /etc/podium/gateway/ca.crt https://{own}:8443/v2/health/live" in health), health
        confs[host] = conf
    # keepalived's own parser, on an interface of this machine (it refuses names it cannot find).
    here = [name for _, name in socket.if_nameindex() if name != "lo"]
    if shutil.which("keepalived") and here:
        for host, conf in confs.items():
            path = Path(f"/tmp/podium-keepalived-{host}-{id(conf)}.conf")
            # The gateway's user exists on gateway nodes only; nobody stands in for it here.
            path.write_text(conf.replace("host0", here[0]).replace("podium-gateway podium-gateway",
                                                                    "nobody nogroup"))
            try:
                checked = subprocess.run(["keepalived", "--config-test", "-f", str(path)], capture_output=True,
                                         text=True, timeout=30)
            finally:
                path.unlink()
            # Debian's keepalived 2.2.7 ends a config test with SIGTERM to itself (rc -15 here, 143 from a shell) even
            # when the file is fine; whatever it finds wrong (a bad number, an unknown keyword,
            # an interface it lacks) it prints, so a good file prints nothing.
            said = (checked.stdout + checked.stderr).strip()
            assert checked.returncode in (0, -15, 143) and said in ("", "Terminated"), (
                f"{host}: keepalived --config-test: rc {checked.returncode} {said[-2000:]}")


def test_the_firewall_lets_vrrp_in_from_the_other_gateway_node_only() -> None:
    stack = load_stack(LABSTORE)
    for host, peer in (("ctrl", "10.77.19.11"), ("node1", "10.77.19.10")):
        rules = files_for("base", host, settings_of(stack, "base", host))["nftables.conf"]
        assert f"ip saddr {{ {peer} }} ip protocol 112 accept" in rules, rules
    # node2 is no gateway node: no VRRP at all.
    assert "protocol 112" not in files_for("base", "node2", settings_of(stack, "base", "node2"))["nftables.conf"]


def test_without_an_address_gateways_get_no_keepalived(tmp_path: Path) -> None:
    data = yaml.safe_load((LABSTORE / "stack.yaml").read_text())
    del data["gateway"]["address"]
    path = tmp_path / "stack.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    stack = load_stack(path)
    gateway = settings_of(stack, "gateway", "ctrl")
    assert "floating" not in gateway
    assert not [name for name in files_for("gateway", "ctrl", gateway) if name.startswith("keepalived/")]
    assert "vrrp_peers" not in settings_of(stack, "base", "ctrl")


def test_clients_are_given_the_gateways_one_address() -> None:
    from podium.gateway_access import gateway_url

    stack = load_stack(LABSTORE)
    assert gateway_url(stack) == "https://10.77.19.20:8443"
    assert gateway_url(stack, "node1") == "https://10.77.19.11:8443"


def test_a_stack_without_host_network_lets_its_ca_vouch_for_the_gateways_address(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Bare metal without host_network: the CA's networks are its nodes' addresses, and the
    gateways' one address beside them, so the certificate naming it verifies."""
    from cryptography import x509

    from podium.registry.ca import CaScope, ca_certificate, server_certificate

    monkeypatch.setenv("PODIUM_STATE_DIR", str(tmp_path / "state"))
    data = yaml.safe_load((LABSTORE / "stack.yaml").read_text())
    del data["host_network"]
    data["name"] = "floatbare"
    data["network"] = {"admin_sources": ["10.77.19.1"]}
    for node in data["nodes"]:
        del node["machine"]
    path = tmp_path / "stack.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    stack = load_stack(path)
    assert "10.77.19.20/32" in CaScope.of(stack).networks
    ca_certificate(stack.name, CaScope.of(stack))
    cert, _ = server_certificate(stack.name, "gateway-ctrl", ["10.77.19.10", "10.77.19.20"], ["ctrl"])
    names = x509.load_pem_x509_certificate(cert.read_bytes()).extensions.get_extension_for_class(
        x509.SubjectAlternativeName).value
    assert {str(a) for a in names.get_values_for_type(x509.IPAddress)} == {"10.77.19.10", "10.77.19.20"}


def _holds(namespace: str, address: str) -> bool:
    shown = subprocess.run(["ip", "-n", namespace, "-o", "-4", "addr", "show", "to", address], capture_output=True,
                           text=True, check=True).stdout
    return bool(shown.strip())


def test_keepalived_with_the_rendered_settings_elects_one_holder_and_moves_the_address(tmp_path: Path) -> None:
    """Two keepalived processes on the rendered settings, each in a network namespace of this
    test's own joined by a veth pair (a lab bridge in small): one holds the address; when its
    check fails the other takes it within 3 s, and keeps it once the first is healthy again. The
    check of the local gateway is a file this test removes, standing in for a gateway."""
    if os.geteuid() != 0 or not shutil.which("keepalived") or not shutil.which("ip"):
        pytest.skip("needs root, ip and keepalived (apt-get install keepalived)")
    stack = load_stack(LABSTORE)
    tag = uuid.uuid4().hex[:6]
    third = 250 - int(tag, 16) % 20
    sides = {"ctrl": ("a", "10.77.19.10"), "node1": ("b", "10.77.19.11")}
    address = f"10.213.{third}.20"
    # keepalived runs a check as its script user only from folders no one else may write (not /tmp).
    checks = Path(f"/run/podium-keepalived-{tag}")
    checks.mkdir(mode=0o755)
    started: list[subprocess.Popen[bytes]] = []
    try:
        subprocess.run(["ip", "link", "add", f"pk{tag}a", "type", "veth", "peer", "name", f"pk{tag}b"], check=True)
        for host, (side, own) in sides.items():
            namespace, dev, mine = f"pk{tag}{side}", f"pk{tag}{side}", own.replace("10.77.19.", f"10.213.{third}.")
            subprocess.run(["ip", "netns", "add", namespace], check=True)
            subprocess.run(["ip", "link", "set", dev, "netns", namespace], check=True)
            subprocess.run(["ip", "-n", namespace, "addr", "add", f"{mine}/24", "dev", dev], check=True)
            subprocess.run(["ip", "-n", namespace, "link", "set", dev, "up"], check=True)
            (checks / f"ok-{side}").touch()
            check = checks / f"check-{side}"
            check.write_text(f"#!/bin/sh\ntest -e {checks / f'ok-{side}'}\n")
            check.chmod(0o755)
            conf = files_for("gateway", host, settings_of(stack, "gateway", host))["keepalived/keepalived.conf"]
            conf = (conf.replace("10.77.19.", f"10.213.{third}.").replace("host0", dev)
                    .replace("/etc/keepalived/podium-gateway-health", str(check))
                    .replace("podium-gateway podium-gateway", "nobody nogroup"))
            (tmp_path / f"{side}.conf").write_text(conf)
            started.append(subprocess.Popen(
                ["ip", "netns", "exec", namespace, "keepalived", "--dont-fork", "--log-console", "-f",
                 str(tmp_path / f"{side}.conf"), "-p", str(tmp_path / f"{side}.pid"), "-r",
                 str(tmp_path / f"{side}.vrrp.pid")], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        a, b = f"pk{tag}a", f"pk{tag}b"
        deadline = time.monotonic() + 15
        while not (_holds(a, address) or _holds(b, address)) and time.monotonic() < deadline:
            time.sleep(0.1)
        # ctrl has the higher priority: it holds the address first, alone.
        assert _holds(a, address) and not _holds(b, address), "ctrl's keepalived did not take the address"
        (checks / "ok-a").unlink()
        failed = time.monotonic()
        while not _holds(b, address) and time.monotonic() - failed < 10:
            time.sleep(0.05)
        moved = time.monotonic() - failed
        assert _holds(b, address) and not _holds(a, address) and moved <= 3, f"moved in {moved:.2f} s"
        (checks / "ok-a").touch()
        time.sleep(4)
        assert _holds(b, address) and not _holds(a, address), "the address moved back (nopreempt)"
    finally:
        for process in started:
            process.terminate()
            process.wait(timeout=10)
        for side in ("a", "b"):
            subprocess.run(["ip", "netns", "del", f"pk{tag}{side}"], capture_output=True)
        subprocess.run(["ip", "link", "del", f"pk{tag}a"], capture_output=True)
        shutil.rmtree(checks, ignore_errors=True)
