"""TLS certificates of the gateway's network: a CA for the gateway's server certificate, a CA
for the lines' client certificates, and the certificates they sign (P-256, ECDSA-SHA256)."""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from linehost.errors import PkiError

CA_DAYS = 3650
SERVER_DAYS = 825


@dataclass(frozen=True, slots=True)
class TlsFiles:
    """Where init_tls wrote the gateway's TLS material."""

    server_ca: Path  # give to every line: [pki.est] server_ca
    server_cert: Path
    server_key: Path
    client_ca: Path  # [gateway] client_ca
    client_ca_key: Path  # [gateway] client_ca_key (for `gateway client add`)


def init_tls(out: Path, hosts: list[str]) -> TlsFiles:
    """Write a server CA + the gateway's certificate for `hosts` (names or IPs) and a client
    CA into `out`; raise PkiError rather than overwrite a file."""
    files = TlsFiles(
        out / "server-ca.pem",
        out / "gateway.pem",
        out / "gateway.key",
        out / "client-ca.pem",
        out / "client-ca.key",
    )
    for path in (files.server_ca, files.server_cert, files.server_key, files.client_ca,
                 files.client_ca_key):  # fmt: skip
        if path.exists():
            raise PkiError(f"{path}: already exists; refusing to overwrite")
    out.mkdir(parents=True, exist_ok=True)
    server_ca_key = ec.generate_private_key(ec.SECP256R1())
    server_ca = _ca("linehost gateway server CA", server_ca_key)
    key = ec.generate_private_key(ec.SECP256R1())
    sans: list[x509.GeneralName] = []
    for host in hosts:
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            sans.append(x509.DNSName(host))
    now = _now()
    cert = (
        _leaf(
            hosts[0], key.public_key(), server_ca, now, SERVER_DAYS, ExtendedKeyUsageOID.SERVER_AUTH
        )
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .sign(server_ca_key, hashes.SHA256())
    )
    client_ca_key = ec.generate_private_key(ec.SECP256R1())
    client_ca = _ca("linehost gateway client CA", client_ca_key)
    _write(files.server_ca, _pem(server_ca), 0o644)
    _write(files.server_cert, _pem(cert), 0o644)
    _write(files.server_key, _key_pem(key), 0o600)
    _write(files.client_ca, _pem(client_ca), 0o644)
    _write(files.client_ca_key, _key_pem(client_ca_key), 0o600)
    return files


def make_client_cert(
    name: str, ca_cert_path: Path, ca_key_path: Path, days: int
) -> tuple[x509.Certificate, bytes]:
    """A client certificate with CN `name` signed by the client CA, and its key as PEM."""
    ca = _load_cert(ca_cert_path)
    try:
        ca_key = serialization.load_pem_private_key(ca_key_path.read_bytes(), None)
    except OSError as exc:
        raise PkiError(f"client CA key {ca_key_path}: unreadable ({exc.strerror})") from None
    except (ValueError, TypeError):
        raise PkiError(f"client CA key {ca_key_path}: not an unencrypted PEM key") from None
    if not isinstance(ca_key, ec.EllipticCurvePrivateKey):
        raise PkiError(f"client CA key {ca_key_path}: not an EC key")
    if ca_key.public_key() != ca.public_key():
        raise PkiError(f"client CA key {ca_key_path}: not the key of {ca_cert_path}")
    key = ec.generate_private_key(ec.SECP256R1())
    cert = _leaf(name, key.public_key(), ca, _now(), days, ExtendedKeyUsageOID.CLIENT_AUTH).sign(
        ca_key, hashes.SHA256()
    )
    return cert, _key_pem(key)


def write_client_files(out: Path, name: str, cert: x509.Certificate, key_pem: bytes) -> Path:
    """Write `<name>.pem` and `<name>.key` (mode 600) into `out`; return the cert's path."""
    out.mkdir(parents=True, exist_ok=True)
    cert_path, key_path = out / f"{name}.pem", out / f"{name}.key"
    for path in (cert_path, key_path):
        if path.exists():
            raise PkiError(f"{path}: already exists; refusing to overwrite")
    _write(key_path, key_pem, 0o600)
    _write(cert_path, _pem(cert), 0o644)
    return cert_path


def _now() -> datetime:
    return datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=5)


def _ca(cn: str, key: ec.EllipticCurvePrivateKey) -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    now = _now()
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + timedelta(days=CA_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False), True
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
        .sign(key, hashes.SHA256())
    )


def _leaf(
    cn: str,
    key: ec.EllipticCurvePublicKey,
    ca: x509.Certificate,
    now: datetime,
    days: int,
    usage: x509.ObjectIdentifier,
) -> x509.CertificateBuilder:
    return (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
        .issuer_name(ca.subject)
        .public_key(key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(True, False, False, False, True, False, False, False, False), True
        )
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(
                ca.public_key()  # type: ignore[arg-type]
            ),
            critical=False,
        )
    )


def _load_cert(path: Path) -> x509.Certificate:
    try:
        return x509.load_pem_x509_certificate(path.read_bytes())
    except OSError as exc:
        raise PkiError(f"{path}: unreadable ({exc.strerror})") from None
    except ValueError:
        raise PkiError(f"{path}: not a PEM certificate") from None


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _write(path: Path, data: bytes, mode: int) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
