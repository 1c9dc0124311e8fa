"""On a real lab machine: base's verify fails while apt's timers can reach a mirror on their own,
the base role's step masks them (and unattended-upgrades, not installed), verify then passes, and
a second run changes nothing."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import testinfra
from pyinfra.api.deploy import add_deploy
from pyinfra.api.operations import run_ops
from pyinfra.api.state import StateStage
from roles.base import tasks as base_tasks
from roles.base import verify as base_verify
from roles.base.defaults import APT_TIMERS

from podium.drivers.base import LabNetwork, MachineSpec
from podium.drivers.nspawn import NspawnDriver
from podium.drivers.pyinfra_runner import connected
from tests.fixtures_lab import lab_image, lab_network

__all__ = ["lab_image", "lab_network"]

pytestmark = pytest.mark.lab


def _run_quiet_apt(entries: list[tuple[str, dict[str, object]]]) -> int:
    """base's quiet_apt step through pyinfra over SSH; returns how many operations changed."""
    with connected(entries) as state:
        assert [h.name for h in state.inventory.get_active_hosts()] == [entries[0][0]], "no SSH to the machine"
        state.set_stage(StateStage.Prepare)
        add_deploy(state, base_tasks.quiet_apt)
        state.set_stage(StateStage.Execute)
        run_ops(state)
        [host] = list(state.inventory.get_active_hosts())
        changed = 0
        for op_hash in state.get_op_order():
            meta = state.get_op_data_for_host(host, op_hash).operation_meta
            assert meta.is_complete() and meta.did_succeed(), f"{state.get_op_meta(op_hash).names} failed"
            changed += int(meta.did_change())
        return changed


def test_base_masks_apts_timers_and_verify_proves_it(
    lab_image: Path, lab_network: LabNetwork, tmp_path: Path
) -> None:
    driver = NspawnDriver(rootfs=lab_image, boot_timeout=60)
    key = tmp_path / "id_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    address = f"{lab_network.gateway.rsplit('.', 1)[0]}.11"
    spec = MachineSpec("node1", address, 1, 512, (key.with_suffix(".pub").read_text(),))
    try:
        driver.ensure(lab_network, [spec])
        known_hosts = tmp_path / "known_hosts"
        known_hosts.write_text("".join(f"{address} {line}\n" for line in driver.host_keys(lab_network, "node1")))
        config = tmp_path / "ssh_config"
        config.write_text(
            f"Host {address}\n  User root\n  IdentityFile {key}\n  IdentitiesOnly yes\n"
            f"  UserKnownHostsFile {known_hosts}\n  StrictHostKeyChecking yes\n  BatchMode yes\n"
        )
        node = testinfra.get_host(f"ssh://{address}", ssh_config=str(config))
        node.run("systemctl is-system-running --wait")

        with pytest.raises(AssertionError, match="apt-daily.timer is enabled, not masked"):
            base_verify.test_080_apt_fetches_nothing_on_its_own(node)

        entries = [(address, {"ssh_user": "root", "ssh_key": str(key), "ssh_known_hosts_file": str(known_hosts),
                              "ssh_strict_host_key_checking": "yes"})]
        assert _run_quiet_apt(entries) == 1
        base_verify.test_080_apt_fetches_nothing_on_its_own(node)
        assert all(node.run(f"systemctl is-enabled {u}").stdout.strip() == "masked" for u in APT_TIMERS)
        assert _run_quiet_apt(entries) == 0, "a second run must change nothing"
    finally:
        driver.destroy(lab_network)
