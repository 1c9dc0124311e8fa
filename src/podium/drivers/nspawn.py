"""Lab machines as systemd-nspawn containers booted on overlays of one cached Debian image."""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

from podium.commands import tool_output
from podium.drivers.base import (
    LabNetwork,
    MachineDriver,
    MachineSpec,
    MachineStatus,
    check_layout,
    register,
)
from podium.errors import InvalidInput, PodiumError
from podium.lab import cgroups
from podium.lab import network as labnet

log = logging.getLogger(__name__)

STATE_ROOT = Path("/var/lib/podium/lab")
SSH_PORT = 22


def nspawn_command(lab: str, spec: MachineSpec, root: Path) -> list[str]:
    """The systemd-nspawn command line that boots `spec` from the merged overlay at `root`.

    The host's PID 1 need not be systemd: --register=no and --keep-unit keep
    nspawn off the system bus, and CAP_NET_ADMIN lets the machine bring up its
    own interfaces in the namespace the lab network made for it.
    """
    capabilities = ["CAP_NET_ADMIN"] + (["CAP_SYS_ADMIN"] if spec.fuse else [])
    command = [
        "systemd-nspawn",
        "--boot",
        "--register=no",
        "--keep-unit",
        f"--directory={root}",
        f"--machine={labnet.netns_name(lab, spec.name)}",
        f"--hostname={spec.name}",
        f"--capability={','.join(capabilities)}",
        f"--network-namespace-path={labnet.NETNS_DIR / labnet.netns_name(lab, spec.name)}",
        # The driver writes resolv.conf and the journal stays inside the machine.
        "--resolv-conf=off",
        "--link-journal=no",
        "--console=read-only",
    ]
    if spec.fuse:
        command.append("--bind=/dev/fuse")
    return command


def hosts_file(spec: MachineSpec) -> str:
    return (
        "127.0.0.1\tlocalhost\n"
        f"{spec.address}\t{spec.name}\n"
        "::1\tlocalhost ip6-localhost ip6-loopback\n"
    )


@register
class NspawnDriver(MachineDriver):
    """Each machine: its own netns and veth, an overlay of the image, `systemd-nspawn --boot`.

    state_root: per-lab state (overlays, logs, pid files) lives in state_root/<lab>/.
    rootfs: the image to boot; None builds or reuses the cached lab image.
    boot_timeout: seconds to wait for every machine's SSH port.

    Example: `NspawnDriver().ensure(LabNetwork("lab", "10.77.0.0/24", "10.77.0.1"),
    [MachineSpec("node1", "10.77.0.11", 1, 1024, (public_key,))])`
    """

    name = "nspawn"

    def __init__(
        self,
        state_root: Path = STATE_ROOT,
        rootfs: Path | None = None,
        boot_timeout: float = 90.0,
    ) -> None:
        self.state_root = state_root
        self.rootfs = rootfs
        self.boot_timeout = boot_timeout

    # -- the driver's verbs ---------------------------------------------------

    def ensure(self, network: LabNetwork, machines: Sequence[MachineSpec]) -> list[MachineStatus]:
        check_layout(network, machines)
        self._require_root()
        self._check_same_network(network)
        for spec in machines:
            self._check_same_machine(network, spec)
        started: dict[str, subprocess.Popen[bytes]] = {}
        to_start = [spec for spec in machines if self._nspawn_pid(network.lab, spec.name) is None]
        if to_start:
            rootfs = self.rootfs or _default_rootfs()
            labnet.create_network(network, self.lab_dir(network.lab))
            layout = cgroups.host_layout()
            for spec in to_start:
                started[spec.name] = self._start(network, spec, rootfs, layout)
        self._wait_for_ssh(network, machines, started)
        return self.status(network, [spec.name for spec in machines])

    def status(self, network: LabNetwork, names: Sequence[str]) -> list[MachineStatus]:
        statuses = []
        for name in names:
            record = self._record(network.lab, name)
            address = str(record.get("address", "")) if record else ""
            running = self._nspawn_pid(network.lab, name) is not None
            statuses.append(
                MachineStatus(
                    name=name,
                    address=address,
                    running=running,
                    ssh_ready=running and bool(address) and _port_open(address, SSH_PORT),
                    driver=self.name,
                    detail="" if record else "not created",
                )
            )
        return statuses

    def destroy(self, network: LabNetwork, names: Sequence[str] | None = None) -> None:
        self._require_root()
        lab_dir = self.lab_dir(network.lab)
        targets = list(names) if names is not None else self._machine_names(network.lab)
        layout = cgroups.host_layout()
        for name in targets:
            self._remove_machine(network, name, layout)
        if names is None:
            labnet.remove_network(network, lab_dir)
            if lab_dir.exists():
                shutil.rmtree(lab_dir)

    def host_keys(self, network: LabNetwork, name: str) -> list[str]:
        ssh_dir = self.machine_dir(network.lab, name) / "upper" / "etc" / "ssh"
        keys = []
        for path in sorted(ssh_dir.glob("ssh_host_*_key.pub")):
            kind, blob = path.read_text().split()[:2]
            keys.append(f"{kind} {blob}")
        if not keys:
            raise PodiumError(
                f"lab machine {name} of lab {network.lab} has no SSH host keys in {ssh_dir}; "
                "start it with `podium lab up` first."
            )
        return keys

    # -- paths and records ----------------------------------------------------

    def lab_dir(self, lab: str) -> Path:
        return self.state_root / lab

    def machine_dir(self, lab: str, node: str) -> Path:
        return self.lab_dir(lab) / "machines" / node

    def _record(self, lab: str, node: str) -> dict[str, object] | None:
        path = self.machine_dir(lab, node) / "machine.json"
        if not path.exists():
            return None
        data: dict[str, object] = json.loads(path.read_text())
        return data

    def _machine_names(self, lab: str) -> list[str]:
        folder = self.lab_dir(lab) / "machines"
        return sorted(p.name for p in folder.iterdir() if p.is_dir()) if folder.is_dir() else []

    def _nspawn_pid(self, lab: str, node: str) -> int | None:
        """The PID of the machine's nspawn if it still runs (checked against its command line)."""
        pid_file = self.machine_dir(lab, node) / "nspawn.pid"
        try:
            pid = int(pid_file.read_text())
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, ValueError):
            return None
        root = f"--directory={self.machine_dir(lab, node) / 'root'}".encode()
        if state == "Z" or b"systemd-nspawn" not in cmdline[0] or root not in cmdline:
            return None
        return pid

    def _check_same_network(self, network: LabNetwork) -> None:
        record = self.lab_dir(network.lab) / "network.json"
        if record.exists():
            existing = json.loads(record.read_text())["network"]
            if existing != asdict(network):
                raise InvalidInput(
                    f"lab {network.lab} already exists with subnet {existing['subnet']} and "
                    f"gateway "
                    f"{existing['gateway']}; destroy it first (`podium lab down`) to change them."
                )

    def _check_same_machine(self, network: LabNetwork, spec: MachineSpec) -> None:
        record = self._record(network.lab, spec.name)
        if record and record.get("address") != spec.address:
            raise InvalidInput(
                f"lab machine {spec.name} exists with address {record.get('address')}, not "
                f"{spec.address}; destroy it first (`podium lab down`) to change its address."
            )

    @staticmethod
    def _require_root() -> None:
        if os.geteuid() != 0:
            raise PodiumError("nspawn lab machines need root; run the command as root.")

    # -- starting -------------------------------------------------------------

    def _start(
        self,
        network: LabNetwork,
        spec: MachineSpec,
        rootfs: Path,
        layout: cgroups.CgroupLayout,
    ) -> subprocess.Popen[bytes]:
        folder = self.machine_dir(network.lab, spec.name)
        # A machine whose nspawn died may have left processes behind; they must not linger.
        cgroups.kill_and_remove(layout, network.lab, spec.name)
        for sub in ("upper", "work", "root"):
            (folder / sub).mkdir(parents=True, exist_ok=True)
        # Recorded first, so destroy() finds a machine that failed half-way.
        (folder / "machine.json").write_text(json.dumps(asdict(spec), indent=2) + "\n")
        labnet.attach_node(network, spec.name, spec.address)
        root = folder / "root"
        if not _is_mounted(root):
            tool_output(
                [
                    "mount",
                    "-t",
                    "overlay",
                    "overlay",
                    "-o",
                    f"lowerdir={rootfs},upperdir={folder / 'upper'},workdir={folder / 'work'}",
                    str(root),
                ]
            )
        _personalise(root, spec, network)
        dirs = cgroups.prepare(layout, network.lab, spec.name, spec.cpus, spec.memory_mb)
        with open(folder / "nspawn.log", "ab") as log_file:
            process = subprocess.Popen(
                nspawn_command(network.lab, spec, root),
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                # Joined between fork and exec, so nspawn and the whole machine live there.
                preexec_fn=lambda: cgroups.join(dirs),
            )
        (folder / "nspawn.pid").write_text(f"{process.pid}\n")
        # Reap it whenever it exits, so a stopped machine never lingers as a zombie.
        threading.Thread(target=process.wait, daemon=True).start()
        return process

    def _wait_for_ssh(
        self,
        network: LabNetwork,
        machines: Sequence[MachineSpec],
        started: dict[str, subprocess.Popen[bytes]],
    ) -> None:
        deadline = time.monotonic() + self.boot_timeout
        waiting = {spec.name: spec.address for spec in machines}
        while waiting:
            for name, address in list(waiting.items()):
                process = started.get(name)
                if process is not None and process.poll() is not None:
                    raise PodiumError(
                        f"lab machine {name} stopped while booting (exit {process.returncode}); "
                        f"see {self.machine_dir(network.lab, name) / 'nspawn.log'}:\n"
                        + self._log_tail(network.lab, name)
                    )
                if _port_open(address, SSH_PORT):
                    del waiting[name]
            if waiting and time.monotonic() > deadline:
                names = ", ".join(sorted(waiting))
                raise PodiumError(
                    f"lab machines {names} did not accept SSH within {self.boot_timeout:.0f} s; "
                    f"see their nspawn.log under {self.lab_dir(network.lab)}."
                )
            if waiting:
                time.sleep(0.1)

    def _log_tail(self, lab: str, node: str, lines: int = 15) -> str:
        try:
            text = (self.machine_dir(lab, node) / "nspawn.log").read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    # -- stopping -------------------------------------------------------------

    def _remove_machine(
        self, network: LabNetwork, name: str, layout: cgroups.CgroupLayout, timeout: float = 20.0
    ) -> None:
        pid = self._nspawn_pid(network.lab, name)
        if pid is not None:
            # nspawn turns SIGTERM into SIGRTMIN+3 for the machine's systemd: a clean poweroff.
            os.kill(pid, signal.SIGTERM)
            deadline = time.monotonic() + timeout
            while self._nspawn_pid(network.lab, name) is not None and time.monotonic() < deadline:
                time.sleep(0.1)
            if self._nspawn_pid(network.lab, name) is not None:
                log.warning("lab machine %s did not power off in %.0f s; killing it", name, timeout)
        try:
            cgroups.kill_and_remove(layout, network.lab, name)
        except OSError as exc:
            raise PodiumError(f"Could not stop lab machine {name}: {exc}") from None
        folder = self.machine_dir(network.lab, name)
        root = folder / "root"
        if _is_mounted(root):
            tool_output(["umount", str(root)])
        labnet.detach_node(network, name)
        if folder.exists():
            shutil.rmtree(folder)


def _personalise(root: Path, spec: MachineSpec, network: LabNetwork) -> None:
    """Write what makes the machine itself: name, id, resolver, apt source, login keys, host keys."""
    etc = root / "etc"
    (etc / "apt" / "sources.list").write_text(labnet.apt_sources(network))
    (etc / "hostname").write_text(f"{spec.name}\n")
    (etc / "hosts").write_text(hosts_file(spec))
    resolv = etc / "resolv.conf"
    if resolv.is_symlink():
        resolv.unlink()
    resolv.write_text(labnet.resolv_conf(network))
    machine_id = etc / "machine-id"
    if not machine_id.exists() or not machine_id.read_text().strip():
        machine_id.write_text(uuid.uuid4().hex + "\n")
    ssh_dir = root / "root" / ".ssh"
    ssh_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    keys = ssh_dir / "authorized_keys"
    keys.write_text("".join(f"{key.strip()}\n" for key in spec.authorized_keys))
    keys.chmod(0o600)
    if not list((etc / "ssh").glob("ssh_host_*_key")):
        # Generated here, not in the image, so every machine has its own host keys.
        tool_output(["ssh-keygen", "-A", "-f", str(root)])


def _default_rootfs() -> Path:
    from podium.lab.image import build_rootfs

    return build_rootfs()


def _is_mounted(path: Path) -> bool:
    target = str(path)
    with open("/proc/self/mounts") as mounts:
        return any(line.split()[1] == target for line in mounts)


def _port_open(address: str, port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((address, port), timeout=timeout):
            return True
    except OSError:
        return False
