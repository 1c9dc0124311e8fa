"""A real OpenSSH server on 127.0.0.1 that only this test's key may log into as root: a bare-metal
node as Podium's inventory reaches it, with nothing booted."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.fixtures_gateway import free_port

SSHD = "/usr/sbin/sshd"


@dataclass(frozen=True)
class Sshd:
    port: int
    key: Path  # the client's private key, authorized for root
    log: Path

    def logins(self) -> int:
        return self.log.read_text(encoding="utf-8").count("Accepted publickey for root")


def _keygen(path: Path) -> None:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path)], check=True)


@pytest.fixture
def sshd(tmp_path: Path) -> Iterator[Sshd]:
    if not Path(SSHD).exists() or shutil.which("ssh-keygen") is None:
        pytest.skip("openssh-server is not installed (apt-get install openssh-server)")
    folder = tmp_path / "sshd"
    folder.mkdir()
    _keygen(folder / "host")
    _keygen(folder / "client")
    (folder / "authorized_keys").write_text((folder / "client.pub").read_text())
    port = free_port()
    config = folder / "sshd_config"
    config.write_text(
        f"Port {port}\nListenAddress 127.0.0.1\nHostKey {folder / 'host'}\n"
        f"AuthorizedKeysFile {folder / 'authorized_keys'}\nPidFile {folder / 'sshd.pid'}\n"
        "PermitRootLogin prohibit-password\nPasswordAuthentication no\nKbdInteractiveAuthentication no\n"
        # The keys live in pytest's temporary folder, whose parents sshd would find too open.
        "StrictModes no\nUsePAM no\n"
    )
    Path("/run/sshd").mkdir(exist_ok=True)  # sshd's privilege separation folder
    log = folder / "sshd.log"
    with log.open("w") as out:
        server = subprocess.Popen([SSHD, "-D", "-e", "-f", str(config)], stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 10
        while True:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            if server.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"sshd did not listen on {port}: {log.read_text()}")
            time.sleep(0.05)
        yield Sshd(port=port, key=folder / "client", log=log)
    finally:
        server.terminate()
        server.wait(timeout=10)
