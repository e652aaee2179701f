"""DacTemplate: a DAC's TBSCertificate from a template, at a fraction of the builder's cost.

Every DAC of a line differs only in serial, notBefore, CN, public key and SKID; the rest (issuer,
notAfter, VID/PID attributes, basicConstraints, keyUsage, AKID) is the same bytes every time.
cryptography's CertificateBuilder re-encodes all of it per DAC (~100 us here); the template
takes the fixed parts from one TBS the builder made at start-up and fills in the five variable
ones (~10 us). `matches_builder` proves at start-up that both give the same bytes; the tests
compare them over random inputs (tests/pki/test_dac_template.py).
"""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from typing import Final

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from linehost.pki import der
from linehost.pki.signer import tbs_certificate

#: SubjectPublicKeyInfo header of an uncompressed EC P-256 key: SEQUENCE { id-ecPublicKey,
#: prime256v1 }, BIT STRING of 66 bytes (0 unused bits, 0x04 || X || Y).
P256_SPKI_PREFIX: Final = bytes.fromhex("3059301306072a8648ce3d020106082a8648ce3d030107034200")
P256_SPKI_LENGTH: Final = len(P256_SPKI_PREFIX) + 65
_TAG_UTC_TIME: Final = 0x17
_TAG_GENERALIZED_TIME: Final = 0x18
_OID_CN: Final = der.tlv(der.TAG_OID, bytes.fromhex("550403"))  # 2.5.4.3 commonName
_TAG_UTF8_STRING: Final = 0x0C
_TAG_SET: Final = 0x31
_SKID_HEAD: Final = der.tlv(der.TAG_OID, bytes.fromhex("551d0e"))  # 2.5.29.14


class DacTemplate:
    """Builds a DAC's TBSCertificate; `builder` shows which fields a DAC of this line has."""

    def __init__(self, reference: x509.CertificateBuilder) -> None:
        """Take the fixed parts from `reference`: a DAC builder whose subject is CN, then the
        fixed attributes, and whose extensions end with SKID then AKID (LocalIssuer's order)."""
        tbs = tbs_certificate(reference)
        version, _serial, algorithm, issuer, validity, subject, _spki, extensions = der.children(
            tbs
        )
        self._version_to_issuer = version, algorithm, issuer
        self._not_after = der.children(validity)[1]
        rdns = der.children(subject)
        self._subject_tail = b"".join(rdns[1:])  # VID, PID: after the CN
        # [3] { SEQUENCE { ext, ext, SKID, AKID } }
        inner = der.children(extensions)[0]
        exts = der.children(inner)
        if not exts[-2].startswith(b"\x30") or _SKID_HEAD not in exts[-2][:8]:
            raise ValueError("reference DAC extensions do not end with SKID, AKID")
        self._extensions_head = b"".join(exts[:-2])
        self._akid = exts[-1]

    def tbs(self, *, serial: int, not_before: datetime, cn: str, spki: bytes) -> bytes:
        """The DER TBSCertificate for one device (`spki`: an uncompressed P-256 key's DER)."""
        if len(spki) != P256_SPKI_LENGTH or not spki.startswith(P256_SPKI_PREFIX):
            raise ValueError("public key is not an uncompressed EC P-256 SubjectPublicKeyInfo")
        version, algorithm, issuer = self._version_to_issuer
        cn_rdn = der.tlv(
            _TAG_SET, der.sequence(_OID_CN, der.tlv(_TAG_UTF8_STRING, cn.encode("utf-8")))
        )
        # RFC 5280 4.2.1.2 method 1, as x509.SubjectKeyIdentifier.from_public_key does it
        skid = hashlib.sha1(spki[len(P256_SPKI_PREFIX) :], usedforsecurity=False).digest()
        skid_ext = der.sequence(
            _SKID_HEAD, der.tlv(der.TAG_OCTET_STRING, der.tlv(der.TAG_OCTET_STRING, skid))
        )
        extensions = der.sequence(self._extensions_head, skid_ext, self._akid)
        return der.sequence(
            version,
            der.integer(serial),
            algorithm,
            issuer,
            der.sequence(_time(not_before), self._not_after),
            der.sequence(cn_rdn, self._subject_tail),
            spki,
            der.tlv(0xA3, extensions),
        )


def matches_builder(
    template: DacTemplate, builder_for: BuilderFactory, cn: str = "0123456789ABCDEF"
) -> bool:
    """True when `template` gives the same TBS bytes as cryptography's builder for one DAC."""
    key = ec.generate_private_key(ec.SECP256R1()).public_key()
    spki = key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    serial = x509.random_serial_number()
    moment = datetime.now(UTC).replace(microsecond=0)
    built = tbs_certificate(builder_for(serial, moment, cn, key))
    return built == template.tbs(serial=serial, not_before=moment, cn=cn, spki=spki)


class BuilderFactory:
    """A DAC builder for (serial, notBefore, CN, key): the reference the template copies."""

    def __init__(
        self,
        issuer: x509.Name,
        not_after: datetime,
        attributes: list[x509.NameAttribute[str]],
        fixed_extensions: list[x509.Extension[x509.ExtensionType]],
        akid: x509.Extension[x509.ExtensionType],
    ) -> None:
        """The parts every DAC of the line shares."""
        self._issuer = issuer
        self._not_after = not_after
        self._attributes = attributes
        self._fixed = fixed_extensions
        self._akid = akid

    def __call__(
        self, serial: int, not_before: datetime, cn: str, key: ec.EllipticCurvePublicKey
    ) -> x509.CertificateBuilder:
        """The builder of one DAC."""
        return x509.CertificateBuilder(
            issuer_name=self._issuer,
            subject_name=x509.Name(
                [x509.NameAttribute(NameOID.COMMON_NAME, cn), *self._attributes]
            ),
            public_key=key,
            serial_number=serial,
            not_valid_before=not_before,
            not_valid_after=self._not_after,
            extensions=[
                *self._fixed,
                x509.Extension(
                    x509.SubjectKeyIdentifier.oid,
                    False,
                    x509.SubjectKeyIdentifier.from_public_key(key),
                ),
                self._akid,
            ],
        )


def _time(moment: datetime) -> bytes:
    """RFC 5280 4.1.2.5: UTCTime through 2049, GeneralizedTime from 2050 (whole seconds)."""
    moment = moment.astimezone(UTC)
    if 1950 <= moment.year < 2050:
        return der.tlv(_TAG_UTC_TIME, moment.strftime("%y%m%d%H%M%SZ").encode("ascii"))
    return der.tlv(_TAG_GENERALIZED_TIME, f"{moment:%Y%m%d%H%M%S}Z".encode("ascii"))
