"""Pack the lab VM disk as a vagrant-libvirt box: box.img, metadata.json and a Vagrantfile."""

from __future__ import annotations

import glob
import json
import os
import shutil
import subprocess
import tarfile
from pathlib import Path

from podium.commands import tool_output
from podium.errors import InvalidInput, PodiumError
from podium.lab.vmimage import PARTITION_START

BOX_NAME = "podium/debian12"

# Vagrant's well-known key pair: a box ships its public half and Vagrant swaps
# it for a fresh key of the machine's own on the first `vagrant up`.
VAGRANT_KEY_GLOBS = (
    "/usr/share/rubygems-integration/all/gems/vagrant-*/keys/vagrant.pub",
    "/opt/vagrant/embedded/gems/gems/vagrant-*/keys/vagrant.pub",
    "/opt/vagrant/embedded/gems/*/gems/vagrant-*/keys/vagrant.pub",
)

# vagrant-libvirt's management network hands out leases from 192.168.121.0/24
# with its resolver on .1; the box has no resolver of its own otherwise (the
# Podium driver writes one per machine from its seed).
BOX_RESOLV_CONF = "nameserver 192.168.121.1\n"

# Settings every machine of this box gets, before the project's Vagrantfile.
BOX_VAGRANTFILE = """\
Vagrant.configure("2") do |config|
  config.ssh.username = "root"
  config.vm.provider :libvirt do |libvirt|
    libvirt.disk_bus = "virtio"
    libvirt.nic_model_type = "virtio"
  end
end
"""


def vagrant_public_key() -> str:
    """Vagrant's insecure public key as installed with Vagrant on this machine."""
    for pattern in VAGRANT_KEY_GLOBS:
        for path in sorted(glob.glob(pattern)):
            return Path(path).read_text().strip()
    raise PodiumError(
        "Vagrant's public key (keys/vagrant.pub) was not found; install Vagrant "
        "(`apt-get install -y vagrant vagrant-libvirt`) or pass authorized_key."
    )


def box_metadata(virtual_size_gib: int) -> dict[str, object]:
    return {"provider": "libvirt", "format": "qcow2", "virtual_size": virtual_size_gib}


def pack_box(out: Path, image: Path | None = None, authorized_key: str | None = None) -> Path:
    """Write the vagrant-libvirt box `out` from the lab's VM disk; returns `out`.

    out: the .box file to write (a tar of box.img, metadata.json and Vagrantfile).
    image: the bootable qcow2; None builds or reuses the cached lab VM image.
    authorized_key: a public key root accepts besides Vagrant's insecure key (which Vagrant swaps
    for a key of its own at first login), e.g. the stack's key so `podium up` can log in.

    Example: `pack_box(Path("build/podium-debian12.box"))`, then
    `vagrant box add --name podium/debian12 build/podium-debian12.box`.
    """
    if out.suffix != ".box":
        raise InvalidInput(f"box file {out} must end in .box, like build/podium-debian12.box.")
    for tool in ("qemu-img", "debugfs"):
        if shutil.which(tool) is None:
            raise PodiumError(f"Packing a box needs {tool}; install it with `apt-get install -y qemu-utils e2fsprogs`.")
    if image is None:
        from podium.lab.vmimage import build_vm_image

        image = build_vm_image()
    key = "\n".join(k for k in (vagrant_public_key(), authorized_key) if k)
    out.parent.mkdir(parents=True, exist_ok=True)
    scratch = out.parent / f".{out.name}.{os.getpid()}"
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir()
    try:
        raw = scratch / "disk.raw"
        tool_output(["qemu-img", "convert", "-f", "qcow2", "-O", "raw", str(image), str(raw)])
        _personalise(raw, scratch, key)
        tool_output(["qemu-img", "convert", "-f", "raw", "-O", "qcow2", str(raw), str(scratch / "box.img")])
        raw.unlink()
        info = json.loads(tool_output(["qemu-img", "info", "--output=json", str(scratch / "box.img")]))
        size_gib = -(-int(info["virtual-size"]) // 2**30)
        (scratch / "metadata.json").write_text(json.dumps(box_metadata(size_gib)) + "\n")
        (scratch / "Vagrantfile").write_text(BOX_VAGRANTFILE)
        partial = scratch / out.name
        # Uncompressed: the qcow2 inside is what matters, and gzip would take minutes.
        with tarfile.open(partial, "w") as tar:
            for name in ("metadata.json", "Vagrantfile", "box.img"):
                tar.add(scratch / name, arcname=name)
        partial.rename(out)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return out


def _personalise(raw: Path, scratch: Path, key: str) -> None:
    """Write root's login key and a resolver into the root partition, without mounting it."""
    (scratch / "authorized_keys").write_text(key + "\n")
    (scratch / "resolv.conf").write_text(BOX_RESOLV_CONF)
    requests = [
        "rm /root/.ssh/authorized_keys",
        f"write {scratch / 'authorized_keys'} /root/.ssh/authorized_keys",
        "sif /root/.ssh/authorized_keys mode 0100600",
        "rm /etc/resolv.conf",
        f"write {scratch / 'resolv.conf'} /etc/resolv.conf",
        "sif /etc/resolv.conf mode 0100644",
    ]
    for path in ("/root/.ssh/authorized_keys", "/etc/resolv.conf"):
        requests += [f"sif {path} uid 0", f"sif {path} gid 0"]
    (scratch / "debugfs.cmd").write_text("\n".join(requests) + "\n")
    # debugfs opens the partition inside the disk file by its byte offset.
    partition = f"{raw}?offset={PARTITION_START * 512}"
    result = subprocess.run(
        ["debugfs", "-w", "-f", str(scratch / "debugfs.cmd"), partition],
        capture_output=True,
        text=True,
    )
    check = subprocess.run(
        ["debugfs", "-R", "cat /root/.ssh/authorized_keys", partition],
        capture_output=True,
        text=True,
    )
    if result.returncode != 0 or check.stdout.strip() != key:
        raise PodiumError(f"Writing the box's login key failed: {result.stderr.strip()[-500:]}")
