"""The PAI an issuer works under: loading certificates, checking the chain, its identity."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from linehost.errors import PkiError
from linehost.pki.matter import OID_MATTER_PID, OID_MATTER_VID
from linehost.pki.profile import check_chain_or_raise


@dataclass(frozen=True, slots=True)
class IssuingPai:
    """A checked PAI with the VID/PID of the line's DACs, and what every DAC delivery carries."""

    certificate: x509.Certificate
    vid: str
    pid: str
    pem: str = field(init=False)
    sha256: str = field(init=False)

    def __post_init__(self) -> None:
        pem = self.certificate.public_bytes(serialization.Encoding.PEM).decode("ascii")
        der = self.certificate.public_bytes(serialization.Encoding.DER)
        object.__setattr__(self, "pem", pem)
        object.__setattr__(self, "sha256", hashlib.sha256(der).hexdigest())


class PaiIssuer:
    """The PAI properties every issuer exposes, read from its IssuingPai."""

    _issuing: IssuingPai

    @property
    def pai_certificate(self) -> x509.Certificate:
        """The PAI certificate every DAC is issued under."""
        return self._issuing.certificate

    @property
    def pai_pem(self) -> str:
        """The PAI certificate delivered after every DAC."""
        return self._issuing.pem

    @property
    def pai_sha256(self) -> str:
        """Lower-case hex sha256 of the PAI DER."""
        return self._issuing.sha256

    @property
    def vid(self) -> str:
        """The vendor id every DAC carries (4 upper-case hex digits)."""
        return self._issuing.vid

    @property
    def pid(self) -> str:
        """The product id every DAC carries (4 upper-case hex digits)."""
        return self._issuing.pid


def load_pai(
    pai_cert: Path,
    vid: str,
    pid: str,
    *,
    paa_cert: Path | None = None,
    now: datetime | None = None,
    current: bool = True,
) -> IssuingPai:
    """Load the PAI (and PAA), check the chain and that the PAI is for `vid`/`pid`; raise
    PkiError naming the file and the problem. `current` False skips the validity period (a
    previous PAI, kept for verification and CRLs, may have expired)."""
    pai = load_certificate(pai_cert, "PAI")
    paa = load_certificate(paa_cert, "PAA") if paa_cert is not None else None
    check_chain_or_raise(
        pai,
        paa,
        (now or datetime.now(UTC)) if current else None,
        pai_name=f"PAI certificate {pai_cert}",
        paa_name=f"PAA certificate {paa_cert}",
    )
    pai_vid = subject_attribute(pai, OID_MATTER_VID)
    if pai_vid != vid:
        raise PkiError(
            f"PAI certificate {pai_cert}: PAI VID {pai_vid} differs from configured vid {vid}"
        )
    pai_pid = subject_attribute(pai, OID_MATTER_PID)
    if pai_pid is not None and pai_pid != pid:
        raise PkiError(
            f"PAI certificate {pai_cert}: PAI PID {pai_pid} differs from configured pid {pid}"
        )
    return IssuingPai(pai, vid, pid)


def load_certificate(path: Path, what: str) -> x509.Certificate:
    """Read one PEM or DER certificate; raise PkiError naming the file and the problem."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise PkiError(f"{what} certificate {path}: unreadable ({exc.strerror or exc})") from None
    try:
        if b"-----BEGIN" in data:
            return x509.load_pem_x509_certificate(data)
        return x509.load_der_x509_certificate(data)
    except ValueError:
        raise PkiError(f"{what} certificate {path}: not a PEM or DER X.509 certificate") from None


def subject_attribute(cert: x509.Certificate, oid: x509.ObjectIdentifier) -> str | None:
    """The first subject attribute `oid` of `cert` as text, or None."""
    attrs = cert.subject.get_attributes_for_oid(oid)
    return str(attrs[0].value) if attrs else None


def key_identifier(cert: x509.Certificate, ext: type[x509.ExtensionType]) -> bytes | None:
    """The subject (SubjectKeyIdentifier) or authority (AuthorityKeyIdentifier) key id, or None."""
    try:
        value = cert.extensions.get_extension_for_class(ext).value
    except (x509.ExtensionNotFound, ValueError):
        return None
    if isinstance(value, x509.SubjectKeyIdentifier):
        return value.digest
    if isinstance(value, x509.AuthorityKeyIdentifier):
        return value.key_identifier
    return None
