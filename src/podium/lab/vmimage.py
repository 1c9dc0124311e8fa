"""Make the lab rootfs a bootable qcow2 disk (kernel, GRUB), cached by a hash of its recipe."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

from rich.console import Console

from podium.commands import tool_output
from podium.errors import PodiumError
from podium.lab.image import DEFAULT_CACHE_DIR, ImageRecipe, build_lock, build_rootfs

ROOT_LABEL = "podium-root"
SEED_LABEL = "podium-seed"

# What a VM needs on top of the container image: a kernel and its initramfs
# (which need udev and kmod), and GRUB's BIOS files so the disk boots by itself.
VM_PACKAGES: tuple[str, ...] = (
    "linux-image-amd64",
    "initramfs-tools",
    "udev",
    "kmod",
    "grub-pc-bin",
)

KERNEL_CMDLINE = f"root=LABEL={ROOT_LABEL} ro console=tty0 console=ttyS0,115200n8 net.ifnames=0"

# A fixed grub.cfg instead of update-grub: this builder has no udev, so
# update-grub would write the loop device as root=. Booting the /vmlinuz and
# /initrd.img links that Debian keeps current makes kernel upgrades inside the
# VM work without regenerating it.
GRUB_CFG = f"""\
set timeout=0
insmod part_msdos
insmod ext2
search --no-floppy --label {ROOT_LABEL} --set=root
linux /vmlinuz {KERNEL_CMDLINE}
initrd /initrd.img
boot
"""

PARTITION_START = 2048  # sectors: the root partition starts at 1 MiB

# An image from a bundle: the chroot's apt reads the bundle's repository, bind-mounted here,
# and nothing else (the source and key are removed before the disk is made).
BUNDLE_IN_CHROOT = "/mnt/podium-bundle-apt"
BUNDLE_KEY_IN_CHROOT = "/etc/apt/podium-bundle-build.asc"
BUNDLE_SOURCE_IN_CHROOT = "/etc/apt/podium-bundle-build.list"
BUNDLE_APT_OPTIONS = (
    f"Dir::Etc::SourceList={BUNDLE_SOURCE_IN_CHROOT}",
    "Dir::Etc::SourceParts=-",
)

# Runs in the image's chroot after VM_SETUP_SCRIPT: GRUB's modules where its
# prefix points, and a core.img that finds that prefix on the first partition.
GRUB_SCRIPT = """\
set -eu
mkdir -p /boot/grub/i386-pc
cp /usr/lib/grub/i386-pc/*.mod /usr/lib/grub/i386-pc/*.lst /boot/grub/i386-pc/
grub-mkimage -O i386-pc -o /boot/grub/core.img -p '(hd0,msdos1)/boot/grub' \\
    biosdisk part_msdos ext2
"""

# The machine reads its identity (name, addresses, login and host keys) from a
# small ext4 disk labelled podium-seed, written by the libvirt driver on the
# control machine. Applied once per seed, before the network and sshd start.
SEED_SCRIPT = f"""\
#!/bin/sh
set -eu
udevadm settle --timeout=30 || true
device=$(blkid -L {SEED_LABEL} || true)
[ -n "$device" ] || exit 0
mnt=$(mktemp -d)
mount -o ro "$device" "$mnt"
if ! cmp -s "$mnt/seed-id" /var/lib/podium/seed-applied; then
    cp -a "$mnt/files/." /
    mkdir -p /var/lib/podium
    cp "$mnt/seed-id" /var/lib/podium/seed-applied
    # udev names NICs before the seed's .link files exist; replay the add events once.
    udevadm control --reload
    udevadm trigger --action=add --subsystem-match=net
    udevadm settle --timeout=30 || true
fi
umount "$mnt"
rmdir "$mnt"
hostname -F /etc/hostname
"""

SEED_UNIT = """\
[Unit]
Description=Apply this machine's Podium seed (name, network, SSH keys)
DefaultDependencies=no
After=local-fs.target systemd-udev-trigger.service
Before=network-pre.target systemd-networkd.service ssh.service podium-ssh-hostkeys.service
Wants=network-pre.target

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/usr/local/sbin/podium-seed

[Install]
WantedBy=sysinit.target
"""

VM_SETUP_SCRIPT = f"""\
set -eu
echo 'LABEL={ROOT_LABEL} / ext4 errors=remount-ro 0 1' > /etc/fstab
mkdir -p /boot/grub /usr/local/sbin /etc/systemd/network \\
    /etc/systemd/system/systemd-networkd-wait-online.service.d
cat > /boot/grub/grub.cfg <<'EOF'
{GRUB_CFG}EOF
cat > /usr/local/sbin/podium-seed <<'EOF'
{SEED_SCRIPT}EOF
chmod 0755 /usr/local/sbin/podium-seed
cat > /etc/systemd/system/podium-seed.service <<'EOF'
{SEED_UNIT}EOF
# Interfaces the seed does not name (Vagrant's management NIC) ask DHCP.
cat > /etc/systemd/network/99-podium-dhcp.network <<'EOF'
[Match]
Name=eth* en*

[Network]
DHCP=ipv4
EOF
# One configured link is enough to call the network online; without this a
# NIC that never gets a lease holds boot for two minutes.
cat > /etc/systemd/system/systemd-networkd-wait-online.service.d/any.conf <<'EOF'
[Service]
ExecStart=
ExecStart=/lib/systemd/systemd-networkd-wait-online --any --timeout=30
EOF
systemctl enable systemd-networkd.service podium-seed.service
# The console of a VM is a serial port; a getty there only costs boot time.
ln -sf /dev/null /etc/systemd/system/serial-getty@.service
apt-get clean
rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin /var/log/*.log
"""


@dataclass(frozen=True)
class VmImageRecipe:
    """The container image's recipe plus what makes it boot; its hash names the cached disk."""

    base: ImageRecipe = field(default_factory=ImageRecipe)
    packages: tuple[str, ...] = VM_PACKAGES
    setup: str = VM_SETUP_SCRIPT
    grub: str = GRUB_SCRIPT
    disk_gib: int = 4

    def digest(self) -> str:
        blob = json.dumps(asdict(self), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]

    def file_name(self) -> str:
        return f"debian-{self.base.suite}-vm-{self.digest()}.qcow2"


def vm_image_path(cache_dir: Path = DEFAULT_CACHE_DIR, recipe: VmImageRecipe | None = None) -> Path:
    """Where the disk of `recipe` lives (or will live) in `cache_dir`."""
    return cache_dir / (recipe or VmImageRecipe()).file_name()


def build_vm_image(
    cache_dir: Path = DEFAULT_CACHE_DIR,
    force: bool = False,
    recipe: VmImageRecipe | None = None,
    console: Console | None = None,
    repository: Path | None = None,
) -> Path:
    """Return the cached bootable qcow2 of `recipe`, building it (and its rootfs) if missing.

    cache_dir: folder holding the rootfs folders and the VM disks.
    force: rebuild the disk even if it is cached (the rootfs is reused).
    recipe: what to build; the default is the lab's Debian 12 image with a kernel.
    console: where progress goes (stderr by default).
    repository: a bundle's apt folder, for a recipe whose base is a `bundle_recipe`: the rootfs
        and the kernel come from it, with no network.

    Example: `disk = build_vm_image()` then use it as the backing file of each VM's overlay.
    """
    recipe = recipe or VmImageRecipe()
    final = vm_image_path(cache_dir, recipe)
    if final.is_file() and not force:
        return final
    if os.geteuid() != 0:
        raise PodiumError(f"Building the VM image {final} needs root (chroot); run it as root.")
    missing = [t for t in ("qemu-img", "sfdisk", "mkfs.ext4") if not shutil.which(t)]
    if missing:
        raise PodiumError(
            f"Building the VM image needs {', '.join(missing)}; install them with "
            "`apt-get install -y qemu-utils fdisk e2fsprogs`."
        )
    console = console or Console(stderr=True)
    rootfs = build_rootfs(cache_dir, recipe=recipe.base, console=console, repository=repository)
    with build_lock(cache_dir):
        if final.is_file() and not force:
            return final
        started = time.monotonic()
        scratch = cache_dir / f".build-{final.stem}-{os.getpid()}"
        shutil.rmtree(scratch, ignore_errors=True)
        scratch.mkdir(parents=True)
        try:
            raw = scratch / "disk.raw"
            with console.status(f"building VM disk {final.name}"):
                _make_disk(raw, rootfs, recipe, scratch, repository)
                partial = scratch / "disk.qcow2"
                tool_output(["qemu-img", "convert", "-f", "raw", "-O", "qcow2", str(raw), str(partial)])
            # The rename is the commit point: a half-built disk is never seen as cached.
            partial.rename(final)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
        size_mb = final.stat().st_size // 2**20
        console.print(f"VM image {final.name} built in {time.monotonic() - started:.0f} s ({size_mb} MB)")
    return final


def _make_disk(raw: Path, rootfs: Path, recipe: VmImageRecipe, scratch: Path,
               repository: Path | None = None) -> None:
    """Lay out `raw`: an MBR, GRUB in the gap before the partition, the ext4 root in it.

    Everything is written into plain files (mkfs.ext4 -d, dd) rather than
    through loop devices and mounts, which need partition scanning and udev
    that build hosts (containers, microVMs) often lack.
    """
    root = scratch / "root"
    tool_output(["cp", "-a", f"{rootfs}/.", f"{root}/"])
    with _chroot_mounts(root, repository):
        packages = " ".join(recipe.packages)
        options = "" if repository is None else " ".join(f"-o {o}" for o in BUNDLE_APT_OPTIONS)
        _chroot(
            root,
            f"set -eu; apt-get {options} update -q; "
            f"apt-get {options} install -y -q --no-install-recommends {packages}",
        )
        _chroot(root, recipe.setup)
        _chroot(root, recipe.grub)
    core = root / "boot" / "grub" / "core.img"
    core_bytes = core.read_bytes()
    boot_sector = (root / "usr" / "lib" / "grub" / "i386-pc" / "boot.img").read_bytes()
    core.unlink()
    if len(core_bytes) > (PARTITION_START - 1) * 512:
        raise PodiumError(f"GRUB's core.img ({len(core_bytes)} bytes) does not fit before the partition.")
    (root / "etc" / "podium-image.json").write_text(json.dumps(asdict(recipe), indent=2, sort_keys=True) + "\n")
    part = scratch / "root.ext4"
    part_bytes = recipe.disk_gib * 2**30 - PARTITION_START * 512
    tool_output(["mkfs.ext4", "-q", "-L", ROOT_LABEL, "-d", str(root), str(part), f"{part_bytes // 1024}k"])
    with open(raw, "wb") as disk:
        disk.truncate(recipe.disk_gib * 2**30)
    tool_output(
        ["sfdisk", "--quiet", str(raw)],
        input_text=f"label: dos\nstart={PARTITION_START}, type=83, bootable\n",
    )
    tool_output(["dd", f"if={part}", f"of={raw}", "bs=1M", "seek=1", "conv=notrunc,sparse", "status=none"])
    with open(raw, "r+b") as disk:
        # boot.img's code only (the partition table after byte 440 stays); it
        # loads core.img from sector 1, whose own blocklist grub-mkimage filled in.
        disk.write(boot_sector[:440])
        disk.seek(512)
        disk.write(core_bytes)


def bundle_apt_files(root: Path, repository: Path) -> list[Path]:
    """The one apt source the chroot reads when the image comes from a bundle: its repository
    (bind-mounted at BUNDLE_IN_CHROOT), signed by the bundle key; returns the files written."""
    from podium.bundle.debs import KEY_FILE, SUITE

    key = root / BUNDLE_KEY_IN_CHROOT.lstrip("/")
    key.write_bytes((repository / KEY_FILE).read_bytes())
    source = root / BUNDLE_SOURCE_IN_CHROOT.lstrip("/")
    source.write_text(f"deb [signed-by={BUNDLE_KEY_IN_CHROOT}] file:{BUNDLE_IN_CHROOT} {SUITE} main\n")
    (root / BUNDLE_IN_CHROOT.lstrip("/")).mkdir(parents=True, exist_ok=True)
    return [key, source]


@contextlib.contextmanager
def _chroot_mounts(root: Path, repository: Path | None = None) -> Iterator[None]:
    """/dev, /proc and /sys for apt and grub-install, plus the host's resolver for apt, or, for
    an image from a bundle, the bundle's repository as apt's only source."""
    mounted: list[Path] = []
    resolv = root / "etc" / "resolv.conf"
    written: list[Path] = []
    try:
        for name in ("dev", "proc", "sys"):
            tool_output(["mount", "--bind", f"/{name}", str(root / name)])
            mounted.append(root / name)
        if repository is None:
            shutil.copyfile("/etc/resolv.conf", resolv)
        else:
            written = bundle_apt_files(root, repository)
            target = root / BUNDLE_IN_CHROOT.lstrip("/")
            tool_output(["mount", "--bind", "-o", "ro", str(repository), str(target)])
            mounted.append(target)
        yield
    finally:
        resolv.unlink(missing_ok=True)
        for path in written:
            path.unlink(missing_ok=True)
        for path in reversed(mounted):
            subprocess.run(["umount", "--lazy", str(path)], capture_output=True)
        if repository is not None:
            with contextlib.suppress(OSError):
                (root / BUNDLE_IN_CHROOT.lstrip("/")).rmdir()


def _chroot(root: Path, script: str) -> None:
    result = subprocess.run(
        ["chroot", str(root), "/bin/sh", "-c", script],
        capture_output=True,
        text=True,
        env={
            "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
            "LC_ALL": "C",
            "DEBIAN_FRONTEND": "noninteractive",
        },
    )
    if result.returncode != 0:
        raise PodiumError(
            f"Building the VM image failed in its chroot (exit {result.returncode}): "
            f"{(result.stderr or result.stdout).strip()[-2000:]}"
        )
