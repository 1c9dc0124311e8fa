"""Build the lab's Debian 12 root filesystem once with debootstrap and cache it by recipe."""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

from rich.console import Console
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from podium.errors import PodiumError

DEFAULT_CACHE_DIR = Path("/var/lib/podium/images")

# Everything a lab node needs to look like a real Debian host to the roles:
# systemd as PID 1, sshd for pyinfra, python3 for pyinfra facts and testinfra.
PACKAGES: tuple[str, ...] = (
    "systemd",
    "systemd-sysv",
    "dbus",
    "openssh-server",
    "python3",
    "iproute2",
    "iputils-ping",
    "netbase",
    "nftables",
    "ca-certificates",
    "sudo",
    "curl",
    "procps",
    "chrony",
)

# What debootstrap's minbase variant lays down for bookworm beyond the Priority: required
# packages (scripts/debian-common): apt, and the empty usr-is-merged flag package. A bundle the
# image is built from must carry them too.
DEBOOTSTRAP_BASE: tuple[str, ...] = ("apt", "usr-is-merged")

# Runs inside the new root (chroot). Host keys are removed so that no two
# machines share them: the driver writes fresh ones into each machine, and the
# oneshot unit below covers any machine started without them.
SETUP_SCRIPT = """\
set -eu
mkdir -p /etc/ssh/sshd_config.d /root/.ssh
chmod 0700 /root/.ssh
cat > /etc/ssh/sshd_config.d/podium.conf <<'EOF'
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
UseDNS no
EOF
rm -f /etc/ssh/ssh_host_*
cat > /etc/systemd/system/podium-ssh-hostkeys.service <<'EOF'
[Unit]
Description=Generate this machine's own SSH host keys
ConditionPathExists=!/etc/ssh/ssh_host_ed25519_key
Before=ssh.service

[Service]
Type=oneshot
ExecStart=/usr/bin/ssh-keygen -A

[Install]
WantedBy=multi-user.target
EOF
ln -sf /etc/systemd/system/podium-ssh-hostkeys.service \
    /etc/systemd/system/multi-user.target.wants/podium-ssh-hostkeys.service
# The console is a read-only log in the lab; a getty there only respawns.
ln -sf /dev/null /etc/systemd/system/console-getty.service
ln -sf /dev/null /etc/systemd/system/getty@.service
# Each machine gets its own id from the driver; an empty file means "generate".
: > /etc/machine-id
# The driver writes hostname and resolv.conf per machine; the builder's must not leak in.
rm -f /etc/hostname /etc/resolv.conf
rm -f /var/lib/dbus/machine-id
apt-get clean
rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin /var/log/*.log
"""


@dataclass(frozen=True)
class ImageRecipe:
    """Everything that decides the bytes of the image; its hash names the cache folder."""

    suite: str = "bookworm"
    mirror: str = "http://deb.debian.org/debian"
    variant: str = "minbase"
    packages: tuple[str, ...] = PACKAGES
    setup: str = SETUP_SCRIPT

    def digest(self) -> str:
        blob = json.dumps(asdict(self), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]

    def folder_name(self) -> str:
        return f"debian-{self.suite}-{self.digest()}"


# A recipe whose mirror starts so is built from a bundle's apt repository, named by the digest
# of its package index: the same packages make the same image wherever the bundle sits.
BUNDLE_MIRROR = "bundle:"


def bundle_recipe(repository: Path) -> ImageRecipe:
    """The lab image from a bundle's signed apt repository (its `apt/` folder), no network."""
    from podium.bundle.manifest import file_sha256

    index = repository / "dists" / "bookworm" / "main" / "binary-amd64" / "Packages"
    if not index.is_file():
        raise PodiumError(f"{repository} holds no apt repository (no {index}); build it with `podium bundle`")
    return ImageRecipe(mirror=f"{BUNDLE_MIRROR}{file_sha256(index)[:16]}")


def debootstrap_command(
    recipe: ImageRecipe, target: Path, repository: Path | None = None, keyring: Path | None = None
) -> list[str]:
    """The debootstrap command line that lays the recipe's base system into `target`.

    repository: for a bundle recipe, the bundle's apt folder (read as a file: mirror).
    keyring: the bundle key as a binary keyring, which debootstrap checks Release against.
    """
    if recipe.mirror.startswith(BUNDLE_MIRROR):
        if repository is None or keyring is None:
            raise PodiumError(f"image {recipe.folder_name()} is built from a bundle; give its apt folder")
        source = [f"--keyring={keyring}", recipe.suite, str(target), f"file://{repository.resolve()}"]
    else:
        source = [recipe.suite, str(target), recipe.mirror]
    return ["debootstrap", f"--variant={recipe.variant}", f"--include={','.join(recipe.packages)}", *source]


def image_path(cache_dir: Path = DEFAULT_CACHE_DIR, recipe: ImageRecipe | None = None) -> Path:
    """Where the image of `recipe` lives (or will live) in `cache_dir`."""
    return cache_dir / (recipe or ImageRecipe()).folder_name()


def build_rootfs(
    cache_dir: Path = DEFAULT_CACHE_DIR,
    force: bool = False,
    recipe: ImageRecipe | None = None,
    console: Console | None = None,
    repository: Path | None = None,
) -> Path:
    """Return the cached root filesystem of `recipe`, building it first if it is missing.

    cache_dir: folder holding one sub-folder per recipe hash.
    force: rebuild even if the cached image exists.
    recipe: what to build; the default is the lab's Debian 12 image.
    console: where progress goes (stderr by default).
    repository: a bundle's apt folder, for a `bundle_recipe` (built with no network).

    Example: `rootfs = build_rootfs()` then boot machines on overlays of `rootfs`.
    """
    recipe = recipe or ImageRecipe()
    final = image_path(cache_dir, recipe)
    if final.is_dir() and not force:
        return final
    if os.geteuid() != 0:
        raise PodiumError(
            f"Building the lab image at {final} needs root (debootstrap and chroot); "
            "run the command as root."
        )
    if shutil.which("debootstrap") is None:
        raise PodiumError(
            "debootstrap is not installed; install it with `apt-get install -y debootstrap`."
        )
    cache_dir.mkdir(parents=True, exist_ok=True)
    with _build_lock(cache_dir):
        # Another process may have finished the same image while we waited.
        if final.is_dir() and not force:
            return final
        console = console or Console(stderr=True)
        scratch = cache_dir / f".build-{final.name}-{os.getpid()}"
        shutil.rmtree(scratch, ignore_errors=True)
        started = time.monotonic()
        try:
            _run_debootstrap(recipe, scratch, console, repository)
            _run_setup(recipe, scratch, console)
            (scratch / "etc" / "podium-image.json").write_text(
                json.dumps(asdict(recipe), indent=2, sort_keys=True) + "\n"
            )
            if final.exists():
                old = cache_dir / f".old-{final.name}-{os.getpid()}"
                final.rename(old)
                shutil.rmtree(old, ignore_errors=True)
            # The rename is the commit point: a half-built image is never seen as cached.
            scratch.rename(final)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
        console.print(
            f"lab image {final.name} built in {time.monotonic() - started:.0f} s "
            f"({_size_mb(final)} MB)"
        )
    return final


@contextmanager
def _build_lock(cache_dir: Path) -> Iterator[None]:
    with open(cache_dir / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


# Builders of images derived from the rootfs (the VM disk) share this cache folder's lock.
build_lock = _build_lock


def _run_debootstrap(recipe: ImageRecipe, target: Path, console: Console, repository: Path | None) -> None:
    keyring = None
    if repository is not None:
        # gpgv, which debootstrap checks Release with, reads binary keyrings only.
        keyring = target.parent / f".keyring-{os.getpid()}.gpg"
        from podium.bundle.debs import KEY_FILE

        armored = (repository / KEY_FILE).read_bytes()
        keyring.write_bytes(subprocess.run(["gpg", "--dearmor"], input=armored, capture_output=True, check=True).stdout)
    try:
        _debootstrap(debootstrap_command(recipe, target, repository, keyring), recipe, console)
    finally:
        if keyring is not None:
            keyring.unlink(missing_ok=True)


def _debootstrap(command: list[str], recipe: ImageRecipe, console: Console) -> None:
    tail: list[str] = []
    with Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        TimeElapsedColumn(),
        console=console,
        transient=True,
    ) as progress:
        task = progress.add_task(f"debootstrap {recipe.suite}: starting", total=None)
        with subprocess.Popen(
            command,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env={**os.environ, "DEBIAN_FRONTEND": "noninteractive", "LC_ALL": "C"},
        ) as proc:
            assert proc.stdout is not None
            for line in proc.stdout:
                line = line.rstrip()
                tail = (tail + [line])[-20:]
                # debootstrap reports each step as "I: <step>"; show the latest one.
                if line.startswith("I: "):
                    progress.update(task, description=f"debootstrap {recipe.suite}: {line[3:70]}")
            code = proc.wait()
    if code != 0:
        raise PodiumError(
            f"debootstrap of Debian {recipe.suite} from {recipe.mirror} failed (exit {code}); "
            "check that the mirror is reachable. Last output:\n" + "\n".join(tail)
        )


def _run_setup(recipe: ImageRecipe, target: Path, console: Console) -> None:
    with console.status("configuring the image (sshd, host keys, units)"):
        result = subprocess.run(
            ["chroot", str(target), "/bin/sh", "-c", recipe.setup],
            capture_output=True,
            text=True,
            env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL": "C"},
        )
    if result.returncode != 0:
        raise PodiumError(
            f"Configuring the lab image failed (exit {result.returncode}): "
            f"{(result.stderr or result.stdout).strip()[-2000:]}"
        )


def _size_mb(path: Path) -> int:
    out = subprocess.run(["du", "-sm", str(path)], capture_output=True, text=True).stdout
    return int(out.split()[0]) if out else 0
