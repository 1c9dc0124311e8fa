"""The bundle's signed apt repository: the pinned .debs, the dependencies apt resolves for them
from nothing installed, and the indexes apt-ftparchive writes and a bundle key signs.

apt-ftparchive (apt-utils) rather than reprepro or aptly: the repository is a plain folder
rebuilt from its pool in one step, with no database beside it that could drift from the files
the manifest lists, and apt-utils comes from the same source as the apt that resolves the set.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from podium.artifacts import CACHE_ROOT, locked
from podium.bundle.manifest import file_sha256
from podium.commands import run_tool, tool_output
from podium.errors import PodiumError

SUITE = "bookworm"
ARCH = "amd64"
# Debian's archive as this machine's apt reaches it (its first `/debian` URI), and only the
# suites stacks/versions.yaml pins from. bookworm-security is left out: apt takes a pinned
# package's dependencies at their candidate version, and a security candidate beside a pin
# from bookworm (nginx-common for nginx) leaves the pin unresolvable.
HOST_SOURCES = Path("/etc/apt/sources.list.d")
DEBIAN_ARCHIVE = "http://deb.debian.org/debian"
SUITES = (SUITE, f"{SUITE}-updates")
DEBIAN_KEYRING = "/usr/share/keyrings/debian-archive-keyring.gpg"
# Shared by every bundle built here, so a package is fetched once per machine.
APT_CACHE = CACHE_ROOT / "apt"
KEY_FILE = "podium-bundle.asc"
KEY_NAME = "Podium bundle"


@dataclass(frozen=True)
class Deb:
    """One .deb in the pool: what apt resolved and the file it fetched."""

    package: str
    version: str
    file: str
    sha256: str


def wanted_key(pins: dict[str, str], extra: list[str]) -> str:
    """What decides the repository's content: the pins, the unpinned extras and the suite."""
    blob = json.dumps({"suite": SUITE, "arch": ARCH, "pins": pins, "extra": sorted(extra)}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


def up_to_date(repo: Path, key: str) -> bool:
    """True when `repo` already holds the signed repository for `key` with every .deb intact."""
    lock = repo / "lock.json"
    if not (lock.exists() and (repo / "dists" / SUITE / "InRelease").exists()):
        return False
    recorded = json.loads(lock.read_text())
    if recorded.get("key") != key:
        return False
    return all(file_sha256(repo / "pool" / d["file"]) == d["sha256"] for d in recorded["debs"])


def build_repository(repo: Path, pins: dict[str, str], extra: list[str], gnupg: Path) -> int:
    """Resolve, fetch and sign the repository in `repo`; returns how many .debs were downloaded.

    Args:
        repo: the bundle's apt folder (pool/, dists/, the public key, lock.json).
        pins: package → version, each installed exactly so on nodes.
        extra: packages at the archive's version (debootstrap's base system for the lab image).
        gnupg: the bundle key's GnuPG home (0700, outside the bundle).
    """
    with locked(APT_CACHE / ".lock"):
        return _build_repository(repo, pins, extra, gnupg)


def _build_repository(repo: Path, pins: dict[str, str], extra: list[str], gnupg: Path) -> int:
    state = _private_state(APT_CACHE)
    _apt(state, "update")
    names = [f"{name}={version}" for name, version in sorted(pins.items())]
    archives = state / "archives"
    before = {p.name for p in archives.glob("*.deb")}
    # The simulation lists every package the set needs, cached or not (--print-uris would
    # leave out those already in the cache).
    simulated = _apt(state, "install", "--simulate", *names, *extra)
    _apt(state, "install", "--download-only", *names, *extra)
    files = _archive_files(simulated)
    downloaded = len({f for f in files if f not in before})
    pool = repo / "pool"
    pool.mkdir(parents=True, exist_ok=True)
    for stale in pool.iterdir():
        if stale.name not in files:
            stale.unlink()
    debs = []
    for file in sorted(files):
        cached = archives / file
        # A copy, not a link: a byte changed in the bundle must not reach the shared cache.
        if file_sha256(pool / file) != file_sha256(cached):
            shutil.copy2(cached, pool / file)
        package, version = _deb_identity(pool / file)
        debs.append(Deb(package, version, file, file_sha256(pool / file)))
    _check_pins(debs, pins)
    _indexes(repo, gnupg)
    (repo / "lock.json").write_text(
        json.dumps({"key": wanted_key(pins, extra), "debs": [d.__dict__ for d in debs]}, indent=1) + "\n"
    )
    return downloaded


def required_packages() -> list[str]:
    """Debian's Priority: required packages, what debootstrap lays down before anything else."""
    with locked(APT_CACHE / ".lock"):
        state = _private_state(APT_CACHE)
        if not any((state / "lists").glob("*_Packages*")):
            _apt(state, "update")
    names: set[str] = set()
    package = ""
    # dumpavail reads the lists however this machine's apt keeps them (lz4, gzip or plain).
    for line in _apt(state, "dumpavail", tool="apt-cache").splitlines():
        if line.startswith("Package: "):
            package = line.split(": ", 1)[1]
        elif line == "Priority: required":
            names.add(package)
    return sorted(names)


def _private_state(root: Path) -> Path:
    """apt's own folders for the bundle: its lists, its empty dpkg status and its archive cache,
    so the host's installed packages never hide a dependency from the bundle."""
    for sub in ("lists/partial", "archives/partial", "etc/sources.list.d", "etc/preferences.d"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    (root / "status").touch()
    (root / "etc" / "sources.list").touch()
    for other in (root / "etc" / "sources.list.d").iterdir():
        other.unlink()
    (root / "etc" / "sources.list.d" / "debian.sources").write_text(
        f"Types: deb\nURIs: {debian_archive()}\nSuites: {' '.join(SUITES)}\nComponents: main\n"
        f"Signed-By: {DEBIAN_KEYRING}\n"
    )
    return root


def debian_archive() -> str:
    """The Debian archive URI this machine's apt is configured with."""
    for source in sorted(HOST_SOURCES.glob("*.sources")):
        for line in source.read_text().splitlines():
            if line.startswith("URIs:"):
                for uri in line.split()[1:]:
                    if uri.rstrip("/").endswith("/debian"):
                        return uri.rstrip("/")
    return DEBIAN_ARCHIVE


def _apt(state: Path, *args: str, tool: str = "apt-get") -> str:
    options = {
        "Dir::State": str(state),
        "Dir::State::Lists": str(state / "lists"),
        "Dir::State::status": str(state / "status"),
        "Dir::Cache": str(state),
        "Dir::Cache::archives": str(state / "archives"),
        "Dir::Etc::SourceList": str(state / "etc" / "sources.list"),
        "Dir::Etc::SourceParts": str(state / "etc" / "sources.list.d"),
        "Dir::Etc::Preferences": str(state / "etc" / "preferences"),
        "Dir::Etc::PreferencesParts": str(state / "etc" / "preferences.d"),
        "APT::Architecture": ARCH,
        "APT::Architectures": ARCH,
        "APT::Install-Recommends": "false",
        "APT::Get::Assume-Yes": "true",
        # An unprivileged _apt sandbox cannot write into the cache folders made by this user.
        "APT::Sandbox::User": "root",
        "Debug::NoLocking": "true",
    }
    command = [tool]
    for key, value in options.items():
        command += ["-o", f"{key}={value}"]
    result = run_tool([*command, *args], check=False)
    if result.returncode:
        last = result.stderr.strip().splitlines()[-3:]
        raise PodiumError(f"{tool} {args[0]} for the bundle failed (exit {result.returncode}): {' '.join(last)}")
    return result.stdout


def _archive_files(simulated: str) -> set[str]:
    """The cache's file names of each 'Inst NAME (VERSION ... [ARCH])' line of a simulation."""
    files = set()
    for match in re.finditer(r"^Inst (\S+) \((\S+) .*\[(\S+)\]\)", simulated, re.M):
        name, version, arch = match.groups()
        files.add(f"{name}_{version.replace(':', '%3a')}_{arch}.deb")
    return files


def _deb_identity(deb: Path) -> tuple[str, str]:
    fields = tool_output(["dpkg-deb", "--show", "--showformat=${Package} ${Version}", str(deb)]).split()
    return fields[0], fields[1]


def _check_pins(debs: list[Deb], pins: dict[str, str]) -> None:
    got = {d.package: d.version for d in debs}
    for name, version in sorted(pins.items()):
        if got.get(name) != version:
            raise PodiumError(f"apt fetched {name} {got.get(name)} for pin {name}={version}; the pin is not honoured")


def _indexes(repo: Path, gnupg: Path) -> None:
    """Packages, Release, and the signed InRelease and Release.gpg beside them."""
    dist = repo / "dists" / SUITE
    binary = dist / "main" / f"binary-{ARCH}"
    shutil.rmtree(repo / "dists", ignore_errors=True)
    binary.mkdir(parents=True)
    # Run from the repository's root so Filename: fields are relative to it, as apt expects.
    packages = _in(repo, ["apt-ftparchive", "packages", "pool"])
    (binary / "Packages").write_text(packages)
    # debootstrap and older apts look for a compressed index first; mtime 0 keeps it reproducible.
    with gzip.GzipFile(binary / "Packages.gz", "wb", mtime=0) as compressed:
        compressed.write(packages.encode())
    release = _in(
        dist,
        [
            "apt-ftparchive",
            "-o", "APT::FTPArchive::Release::Origin=Podium",
            "-o", "APT::FTPArchive::Release::Label=Podium bundle",
            "-o", f"APT::FTPArchive::Release::Suite={SUITE}",
            "-o", f"APT::FTPArchive::Release::Codename={SUITE}",
            "-o", "APT::FTPArchive::Release::Components=main",
            "-o", f"APT::FTPArchive::Release::Architectures={ARCH}",
            "release", ".",
        ],
    )
    (dist / "Release").write_text(release)
    _gpg(gnupg, "--local-user", KEY_NAME, "--clearsign", "-o", str(dist / "InRelease"), str(dist / "Release"))
    _gpg(gnupg, "--local-user", KEY_NAME, "--armor", "--detach-sign", "-o", str(dist / "Release.gpg"),
         str(dist / "Release"))
    (repo / KEY_FILE).write_text(_gpg(gnupg, "--armor", "--export", KEY_NAME).stdout)


def bundle_key(gnupg: Path, stack: str) -> None:
    """Make the bundle's signing key once; its secret half stays in `gnupg` (0700, files 0600)."""
    gnupg.mkdir(parents=True, exist_ok=True)
    os.chmod(gnupg, 0o700)
    if _gpg(gnupg, "--list-secret-keys", KEY_NAME, check=False).returncode == 0:
        return
    # No passphrase: the key is as safe as the 0700 folder, and a passphrase would have to
    # reach gpg somehow on every run.
    _gpg(gnupg, "--pinentry-mode", "loopback", "--passphrase", "", "--quick-gen-key",
         f"{KEY_NAME} ({stack}) <bundle@{stack}.podium>", "ed25519", "sign", "never")


def _gpg(gnupg: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    # gpg-agent's socket lives in the home folder and a socket path may not pass 107 bytes, so
    # gpg is given a short link to the stack's folder.
    with tempfile.TemporaryDirectory(prefix="pdm-") as short:
        home = Path(short) / "g"
        home.symlink_to(gnupg.resolve())
        try:
            return run_tool(["gpg", "--homedir", str(home), "--batch", "--yes", *args], check=check)
        finally:
            run_tool(["gpgconf", "--homedir", str(home), "--kill", "gpg-agent"], check=False)


def _in(folder: Path, command: list[str]) -> str:
    result = subprocess.run(command, cwd=folder, capture_output=True, text=True, check=False)
    if result.returncode:
        last = result.stderr.strip()[-300:]
        raise PodiumError(f"`{' '.join(command)}` failed (exit {result.returncode}): {last}")
    return result.stdout
