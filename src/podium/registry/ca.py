"""The stack's own certificate authority: made once per stack on the control machine, it signs
the server certificates of the stack's services (the registry first) and every node trusts it,
for the stack's own names and addresses only (name constraints)."""

from __future__ import annotations

import datetime as dt
import fcntl
import ipaddress
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from podium.errors import PodiumError
from podium.secrets import StackSecrets

if TYPE_CHECKING:
    from podium.stack.model import Stack

CA_DAYS = 3650
# Browsers and most TLS stacks cap server certificates at 398 days.
SERVER_DAYS = 397
# A server certificate this close to expiry is replaced on the next deploy.
RENEW_BEFORE = dt.timedelta(days=30)


@dataclass(frozen=True)
class CaScope:
    """What the stack CA may vouch for: its nodes' names (and names under them) and its
    networks. A leaf for any other name fails verification even though the CA signed it, so
    the CA's key, trusted by every node, cannot be used to impersonate a site's other hosts."""

    dns_names: tuple[str, ...]
    networks: tuple[str, ...]

    @classmethod
    def of(cls, stack: Stack) -> CaScope:
        nets = [ipaddress.ip_network(str(stack.host_network.subnet))] if stack.host_network else []
        nets += [ipaddress.ip_network(str(v.subnet)) for v in stack.network.vlans]
        # The gateways' one address is theirs too: their certificates name it.
        shared = [stack.gateway.address] if stack.gateway and stack.gateway.address else []
        for address in [ipaddress.ip_address(str(a)) for a in [*(n.address for n in stack.nodes), *shared]]:
            if not any(address in net for net in nets if net.version == address.version):
                nets.append(ipaddress.ip_network(address))
        return cls(tuple(sorted({n.name for n in stack.nodes})), tuple(str(n) for n in nets))

    def constraints(self) -> x509.NameConstraints:
        permitted: list[x509.GeneralName] = [x509.DNSName(n) for n in self.dns_names]
        permitted += [x509.IPAddress(ipaddress.ip_network(n)) for n in self.networks]
        return x509.NameConstraints(permitted_subtrees=permitted, excluded_subtrees=None)


def ca_folder(stack: str) -> Path:
    """Where the CA and the certificates it signed live: 0700, every file in it 0600."""
    folder = StackSecrets(stack).path("ca")
    folder.mkdir(mode=0o700, exist_ok=True)
    os.chmod(folder, 0o700)
    return folder


def ca_certificate(stack: str, scope: CaScope | None = None, *, replace: bool = False) -> Path:
    """The CA certificate (PEM) of the stack; what `--ca` takes.

    scope: the names and networks the CA may sign for (`CaScope.of(stack)`); a CA is only ever
    made with one, by `podium up`.
    replace: make a new CA when the existing one was made for another scope (or without name
    constraints). Only a deploy of every component may: base gives the nodes the new CA and
    every service's certificate is signed again on the same run.
    """
    folder = ca_folder(stack)
    cert = folder / "ca.crt"
    if cert.exists() and (scope is None or not replace or _constraints(cert) == scope.constraints()):
        return cert
    if scope is None:
        raise PodiumError(
            f"stack {stack} has no CA yet; `podium up` makes it for the stack's names and addresses"
        )
    with _locked(folder):
        if cert.exists() and (not replace or _constraints(cert) == scope.constraints()):
            return cert  # another process made it while this one waited
        key = ec.generate_private_key(ec.SECP256R1())
        subject = _name(f"Podium CA {stack}")
        now = _now()
        certificate = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=CA_DAYS))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(False, False, False, False, False, True, True, False, False),
                critical=True,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
            .add_extension(scope.constraints(), critical=True)
            .sign(key, hashes.SHA256())
        )
        # Key first: a certificate on disk always has its key beside it.
        _write(folder / "ca.key", _key_pem(key))
        _write(cert, certificate.public_bytes(serialization.Encoding.PEM))
    return cert


def server_certificate(
    stack: str, name: str, addresses: Sequence[str], dns_names: Sequence[str] = ()
) -> tuple[Path, Path]:
    """A server certificate for `name`, signed by the stack CA: (certificate, key) paths.

    name: what the certificate is for (e.g. "registry"); its files are named after it.
    addresses: IP addresses the service is reached at (subject alternative names).
    dns_names: host names the service is reached at.

    The same certificate is returned until its names change, its CA changes or it is within
    30 days of expiry, so a deploy that changed nothing writes nothing.
    """
    ca_cert_path = ca_certificate(stack)
    folder = ca_folder(stack)
    cert_path, key_path = folder / f"{name}.crt", folder / f"{name}.key"
    wanted = _alt_names(addresses, dns_names)
    ca_cert = x509.load_pem_x509_certificate(ca_cert_path.read_bytes())
    outside = _outside(wanted, _constraints(ca_cert_path))
    if outside:
        raise PodiumError(
            f"{name}: {', '.join(outside)} is not a name or address of stack {stack}, so its CA "
            "cannot vouch for it; add the node to the stack, then run podium up"
        )
    with _locked(folder):
        if _still_good(cert_path, key_path, wanted, ca_cert):
            return cert_path, key_path
        ca_key = serialization.load_pem_private_key((folder / "ca.key").read_bytes(), None)
        if not isinstance(ca_key, ec.EllipticCurvePrivateKey):
            raise PodiumError(f"the CA key in {folder} is not an EC key; remove {folder} to start over")
        key = ec.generate_private_key(ec.SECP256R1())
        now = _now()
        certificate = (
            x509.CertificateBuilder()
            .subject_name(_name(dns_names[0] if dns_names else str(addresses[0])))
            .issuer_name(ca_cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=SERVER_DAYS))
            .add_extension(x509.SubjectAlternativeName(wanted), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False)
            .sign(ca_key, hashes.SHA256())
        )
        _write(key_path, _key_pem(key))
        _write(cert_path, certificate.public_bytes(serialization.Encoding.PEM))
    return cert_path, key_path


def _constraints(cert: Path) -> x509.NameConstraints | None:
    try:
        loaded = x509.load_pem_x509_certificate(cert.read_bytes())
        return loaded.extensions.get_extension_for_class(x509.NameConstraints).value
    except x509.ExtensionNotFound:
        return None


def _outside(names: list[x509.GeneralName], constraints: x509.NameConstraints | None) -> list[str]:
    """The names a certificate would carry that the CA's constraints do not permit."""
    if constraints is None or constraints.permitted_subtrees is None:
        return []
    dns = [p.value for p in constraints.permitted_subtrees if isinstance(p, x509.DNSName)]
    nets = [ipaddress.ip_network(p.value) for p in constraints.permitted_subtrees
            if isinstance(p, x509.IPAddress)]
    out = []
    for n in names:
        if isinstance(n, x509.DNSName):
            if not any(n.value == d or n.value.endswith("." + d) for d in dns):
                out.append(n.value)
        elif isinstance(n, x509.IPAddress):
            address = ipaddress.ip_address(str(n.value))
            if not any(address in net for net in nets if net.version == address.version):
                out.append(str(address))
    return out


def _alt_names(addresses: Sequence[str], dns_names: Sequence[str]) -> list[x509.GeneralName]:
    names: list[x509.GeneralName] = [x509.DNSName(n) for n in dns_names]
    names += [x509.IPAddress(ipaddress.ip_address(a)) for a in addresses]
    if not names:
        raise PodiumError("a server certificate needs at least one address or DNS name")
    return names


def _still_good(
    cert_path: Path, key_path: Path, wanted: list[x509.GeneralName], ca: x509.Certificate
) -> bool:
    if not (cert_path.exists() and key_path.exists()):
        return False
    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    try:
        names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return False
    return (
        sorted(map(str, names)) == sorted(map(str, wanted))
        and cert.issuer == ca.subject
        and _signed_by(cert, ca)
        and cert.not_valid_after_utc - _now() > RENEW_BEFORE
    )


def _signed_by(cert: x509.Certificate, ca: x509.Certificate) -> bool:
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _write(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
    os.replace(tmp, path)


@contextmanager
def _locked(folder: Path) -> Iterator[None]:
    """Two Podium runs on one control machine must not mint two CAs for the same stack."""
    fd = os.open(folder / ".lock", os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)
