"""A PAI's CRL (X.509 v2, RFC 5280) and the Matter revocation set, from the revocation ledger.

The CRL is signed by the PAI key through its Signer (a PKCS#11 key signs the TBSCertList in the
token), or by a delegated CRL signer certificate the PAI issued. A delegated signer makes the CRL
indirect (RFC 5280 5.2.5, 5.3.3; Matter 1.3 6.2.4): issuingDistributionPoint with indirectCRL
TRUE and a certificateIssuer entry extension naming the PAI on every entry.
"""

from __future__ import annotations

import base64
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Final

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization

from linehost.errors import PkiError
from linehost.pki import der
from linehost.pki.signer import FileKeySigner, Signer, _throwaway_key
from linehost.records import REVOCATION_REASONS

#: Default time from thisUpdate to nextUpdate.
DEFAULT_NEXT_UPDATE: Final = timedelta(days=30)

_REASON_FLAGS: Final = {
    "keyCompromise": x509.ReasonFlags.key_compromise,
    "cACompromise": x509.ReasonFlags.ca_compromise,
    "affiliationChanged": x509.ReasonFlags.affiliation_changed,
    "superseded": x509.ReasonFlags.superseded,
    "cessationOfOperation": x509.ReasonFlags.cessation_of_operation,
    "certificateHold": x509.ReasonFlags.certificate_hold,
    "privilegeWithdrawn": x509.ReasonFlags.privilege_withdrawn,
    "aACompromise": x509.ReasonFlags.aa_compromise,
}
assert set(_REASON_FLAGS) | {"unspecified"} == set(REVOCATION_REASONS)


@dataclass(frozen=True, slots=True)
class CrlEntry:
    """One revoked DAC: serial (upper-case hex), when, why (an RFC 5280 reason name)."""

    serial: str
    revoked_at: datetime
    reason: str


@dataclass(frozen=True, slots=True)
class CrlSigner:
    """Who signs a PAI's CRL: the PAI itself, or a delegated CRL signer the PAI issued."""

    certificate: x509.Certificate  # the certificate whose key signs (PAI or delegated signer)
    signer: Signer
    delegator: x509.Certificate | None = None  # the PAI, when `certificate` is delegated

    @property
    def indirect(self) -> bool:
        """True for a delegated signer: the CRL then names the PAI on each entry."""
        return self.delegator is not None


def check_delegated_signer(signer_cert: x509.Certificate, pai: x509.Certificate) -> None:
    """A delegated CRL signer must be issued by the PAI, hold cRLSign and not be a CA; raise
    PkiError naming the problem."""
    if signer_cert.issuer != pai.subject:
        raise PkiError("CRL signer certificate: not issued by the PAI (issuer differs)")
    try:
        signer_cert.verify_directly_issued_by(pai)
    except (ValueError, TypeError, Exception) as exc:
        raise PkiError(f"CRL signer certificate: not signed by the PAI ({exc})") from None
    try:
        usage = signer_cert.extensions.get_extension_for_class(x509.KeyUsage).value
    except x509.ExtensionNotFound:
        raise PkiError("CRL signer certificate: no keyUsage (needs cRLSign)") from None
    if not usage.crl_sign:
        raise PkiError("CRL signer certificate: keyUsage lacks cRLSign")
    try:
        basic = signer_cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        return
    if basic.ca:
        raise PkiError("CRL signer certificate: must not be a CA (cA true)")


async def build_crl(
    pai: x509.Certificate,
    crl_signer: CrlSigner,
    entries: Sequence[CrlEntry],
    *,
    number: int,
    this_update: datetime,
    next_update: datetime,
) -> x509.CertificateRevocationList:
    """The CRL of the DACs `pai` issued that are in `entries`, signed by `crl_signer`."""
    if number < 1:
        raise PkiError(f"CRL number must be positive, got {number}")
    signer_cert = crl_signer.certificate
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(signer_cert.subject)
        .last_update(this_update)
        .next_update(next_update)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(
                signer_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
            ),
            critical=False,
        )
        .add_extension(x509.CRLNumber(number), critical=False)
    )
    if crl_signer.indirect:
        builder = builder.add_extension(
            x509.IssuingDistributionPoint(
                full_name=None,
                relative_name=None,
                only_contains_user_certs=True,
                only_contains_ca_certs=False,
                only_some_reasons=None,
                indirect_crl=True,
                only_contains_attribute_certs=False,
            ),
            critical=True,
        )
    pai_name = x509.CertificateIssuer([x509.DirectoryName(pai.subject)])
    for entry in entries:
        revoked = (
            x509.RevokedCertificateBuilder()
            .serial_number(int(entry.serial, 16))
            .revocation_date(entry.revoked_at)
        )
        flag = _REASON_FLAGS.get(entry.reason)
        if flag is not None:  # RFC 5280 5.3.1: unspecified SHOULD be absent
            revoked = revoked.add_extension(x509.CRLReason(flag), critical=False)
        if crl_signer.indirect:
            revoked = revoked.add_extension(pai_name, critical=True)
        builder = builder.add_revoked_certificate(revoked.build())
    signer = crl_signer.signer
    if isinstance(signer, FileKeySigner):
        return builder.sign(signer.private_key, hashes.SHA256())
    # The key stays where it is: sign the TBSCertList through the signer, assemble around it.
    tbs = builder.sign(_throwaway_key(), hashes.SHA256()).tbs_certlist_bytes
    signature = await signer.sign(tbs)
    algorithm = bytes.fromhex("300a06082a8648ce3d040302")  # ecdsa-with-SHA256
    body = der.sequence(tbs, algorithm, der.tlv(der.TAG_BIT_STRING, b"\x00" + signature))
    try:
        crl = x509.load_der_x509_crl(body)
    except ValueError as exc:
        raise PkiError(f"CRL signer returned an unusable signature ({exc})") from None
    if not crl.is_signature_valid(signer_cert.public_key()):  # type: ignore[arg-type]
        raise PkiError("CRL signer returned a signature that does not verify")
    return crl


def serial_content_hex(serial: str) -> str:
    """Upper-case hex of the DER INTEGER content octets of a serial (leading 00 kept)."""
    encoded = der.integer(int(serial, 16))
    _tag, start, end = der.read_element(encoded)
    return encoded[start:end].hex().upper()


def revocation_set_entry(
    pai: x509.Certificate, crl_signer: CrlSigner, serials: Sequence[str]
) -> dict[str, Any]:
    """One `revocation_set` object of the Matter SDK's test revocation delegate for `pai`."""
    skid = pai.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    entry: dict[str, Any] = {
        "type": "revocation_set",
        "issuer_subject_key_id": skid.key_identifier.hex().upper(),
        "issuer_name": base64.b64encode(pai.subject.public_bytes()).decode("ascii"),
        "revoked_serial_numbers": [serial_content_hex(serial) for serial in serials],
        "crl_signer_cert": _b64_der(crl_signer.certificate),
    }
    if crl_signer.delegator is not None:
        entry["crl_signer_delegator"] = _b64_der(crl_signer.delegator)
    return entry


def crl_bytes(crl: x509.CertificateRevocationList, *, pem: bool) -> bytes:
    """The CRL as PEM (default for files) or DER."""
    encoding = serialization.Encoding.PEM if pem else serialization.Encoding.DER
    return crl.public_bytes(encoding)


def _b64_der(cert: x509.Certificate) -> str:
    return base64.b64encode(cert.public_bytes(serialization.Encoding.DER)).decode("ascii")
