"""LocalIssuer: DACs signed on the spot by the PAI key (a key file or a PKCS#11 token)."""

from __future__ import annotations

import hashlib
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.types import PublicKeyTypes
from cryptography.x509.oid import NameOID

from linehost.errors import IssuerError, PkiError
from linehost.pki.issuer import CsrInfo, IssuedDac
from linehost.pki.profile import (
    OID_MATTER_PID,
    OID_MATTER_VID,
    check_chain_or_raise,
    check_dac,
    describe,
)
from linehost.pki.signer import Signer, sign_certificate

#: Matter's "no well-defined expiration date" (RFC 5280 4.1.2.5, 99991231235959Z).
NO_EXPIRY = datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC)
#: ub-common-name (RFC 5280): the longest subject CN.
MAX_CN_LENGTH = 64

_HEX4 = re.compile(r"[0-9A-Fa-f]{4}")


class LocalIssuer:
    """Issues Matter DACs signed by the PAI's key; one instance serves every jig of a line."""

    def __init__(
        self,
        pai: x509.Certificate,
        signer: Signer,
        vid: str,
        pid: str,
        *,
        cn_template: str = "{uid}",
        not_after: datetime = NO_EXPIRY,
        backdate: timedelta = timedelta(0),
    ) -> None:
        """Use `pai` and its `signer` as given; LocalIssuer.load is the checked way in."""
        self._pai = pai
        self._signer = signer
        self._vid = vid
        self._pid = pid
        self._cn_template = cn_template
        self._not_after = not_after
        self._backdate = backdate
        self._pai_pem = pai.public_bytes(serialization.Encoding.PEM).decode("ascii")
        pai_der = pai.public_bytes(serialization.Encoding.DER)
        self._pai_sha256 = hashlib.sha256(pai_der).hexdigest()
        self._pai_not_before = pai.not_valid_before_utc
        self._pai_not_after = pai.not_valid_after_utc
        self._issuer_name = pai.subject
        pai_skid = pai.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
        self._fixed_extensions = [
            x509.Extension(
                x509.BasicConstraints.oid, True, x509.BasicConstraints(ca=False, path_length=None)
            ),
            x509.Extension(x509.KeyUsage.oid, True, _DIGITAL_SIGNATURE_ONLY),
        ]
        self._akid = x509.Extension(
            x509.AuthorityKeyIdentifier.oid,
            False,
            x509.AuthorityKeyIdentifier(pai_skid.key_identifier, None, None),
        )
        self._vid_attr = x509.NameAttribute(OID_MATTER_VID, vid)
        self._pid_attr = x509.NameAttribute(OID_MATTER_PID, pid)

    @classmethod
    def load(
        cls,
        pai_cert: Path,
        signer: Signer,
        vid: str,
        pid: str,
        *,
        cn_template: str = "{uid}",
        not_after: datetime | None = None,
        backdate: timedelta = timedelta(0),
        paa_cert: Path | None = None,
    ) -> LocalIssuer:
        """Load and check the PAI (and PAA); raise PkiError naming the file and the problem."""
        vid = _hex4_or_raise(vid, "vid")
        pid = _hex4_or_raise(pid, "pid")
        now = datetime.now(UTC)
        pai = load_certificate(pai_cert, "PAI")
        paa = load_certificate(paa_cert, "PAA") if paa_cert is not None else None
        check_chain_or_raise(
            pai,
            paa,
            now,
            pai_name=f"PAI certificate {pai_cert}",
            paa_name=f"PAA certificate {paa_cert}",
        )
        pai_vid = _attr(pai, OID_MATTER_VID)
        if pai_vid != vid:
            raise PkiError(
                f"PAI certificate {pai_cert}: PAI VID {pai_vid} differs from configured vid {vid}"
            )
        pai_pid = _attr(pai, OID_MATTER_PID)
        if pai_pid is not None and pai_pid != pid:
            raise PkiError(
                f"PAI certificate {pai_cert}: PAI PID {pai_pid} differs from configured pid {pid}"
            )
        if _spki(signer.public_key()) != _spki(pai.public_key()):
            raise PkiError(f"PAI certificate {pai_cert}: signing key does not match its public key")
        try:
            cn = cn_template.format(uid="0" * 64, vid=vid, pid=pid)
        except (KeyError, IndexError, ValueError, AttributeError) as exc:
            raise PkiError(
                f"cn_template {cn_template!r}: not a valid template ({type(exc).__name__}: {exc}); "
                "fields are {uid}, {vid}, {pid}"
            ) from None
        if not cn.strip():
            raise PkiError(f"cn_template {cn_template!r}: gives an empty common name")
        if backdate < timedelta(0):
            raise PkiError(f"backdate {backdate}: must not be negative")
        if not_after is None:
            not_after = NO_EXPIRY
        elif not_after.tzinfo is None:
            not_after = not_after.replace(tzinfo=UTC)
        if not_after <= now:
            raise PkiError(f"DAC not_after {not_after.isoformat()}: is in the past")
        return cls(
            pai, signer, vid, pid, cn_template=cn_template, not_after=not_after, backdate=backdate
        )

    @property
    def pai_certificate(self) -> x509.Certificate:
        """The PAI certificate every DAC is issued under."""
        return self._pai

    @property
    def pai_pem(self) -> str:
        """The PAI certificate delivered after every DAC."""
        return self._pai_pem

    @property
    def pai_sha256(self) -> str:
        """Lower-case hex sha256 of the PAI DER."""
        return self._pai_sha256

    @property
    def vid(self) -> str:
        """The vendor id every DAC carries (4 upper-case hex digits)."""
        return self._vid

    @property
    def pid(self) -> str:
        """The product id every DAC carries (4 upper-case hex digits)."""
        return self._pid

    async def issue(self, uid: str, csr: CsrInfo) -> IssuedDac:
        """Return a DAC for `uid` bound to `csr`'s key; raise IssuerError when it cannot."""
        now = datetime.now(UTC).replace(microsecond=0)
        if now > self._pai_not_after:
            raise IssuerError(f"PAI expired on {self._pai_not_after:%Y-%m-%d %H:%M:%S}")
        try:
            key = serialization.load_der_public_key(csr.public_key_der)
        except ValueError:
            raise IssuerError("CSR public key cannot be loaded") from None
        if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(
            key.curve, ec.SECP256R1
        ):
            raise IssuerError("CSR public key is not EC P-256")
        cn = self._cn_template.format(uid=uid, vid=self._vid, pid=self._pid)
        if not 0 < len(cn) <= MAX_CN_LENGTH:
            raise IssuerError(f"DAC common name is {len(cn)} characters (1..{MAX_CN_LENGTH})")
        subject = x509.Name(
            [x509.NameAttribute(NameOID.COMMON_NAME, cn), self._vid_attr, self._pid_attr]
        )
        builder = x509.CertificateBuilder(
            issuer_name=self._issuer_name,
            subject_name=subject,
            public_key=key,
            serial_number=x509.random_serial_number(),
            not_valid_before=max(now - self._backdate, self._pai_not_before),
            not_valid_after=self._not_after,
            extensions=[
                *self._fixed_extensions,
                x509.Extension(
                    x509.SubjectKeyIdentifier.oid,
                    False,
                    x509.SubjectKeyIdentifier.from_public_key(key),
                ),
                self._akid,
            ],
        )
        try:
            dac = await sign_certificate(builder, self._signer)
        except IssuerError:
            raise
        except Exception as exc:  # a pluggable signer: any failure is an issuer failure
            raise IssuerError(f"signer failed: {type(exc).__name__}: {exc}") from exc
        violations = check_dac(dac, self._pai)
        if violations:
            raise IssuerError(f"issued DAC fails the Matter profile: {describe(violations)}")
        der = dac.public_bytes(serialization.Encoding.DER)
        return IssuedDac(
            pem=dac.public_bytes(serialization.Encoding.PEM).decode("ascii"),
            der=der,
            serial_hex=f"{dac.serial_number:X}",
            sha256=hashlib.sha256(der).hexdigest(),
            public_key_sha256=hashlib.sha256(_spki(key)).hexdigest(),
            pai_sha256=self._pai_sha256,
            vid=self._vid,
            pid=self._pid,
        )

    async def aclose(self) -> None:
        """Release the signer (HSM session, thread pool)."""
        await self._signer.aclose()


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


_DIGITAL_SIGNATURE_ONLY = x509.KeyUsage(
    digital_signature=True,
    content_commitment=False,
    key_encipherment=False,
    data_encipherment=False,
    key_agreement=False,
    key_cert_sign=False,
    crl_sign=False,
    encipher_only=False,
    decipher_only=False,
)


def _hex4_or_raise(value: str, name: str) -> str:
    if not _HEX4.fullmatch(value):
        raise PkiError(f"configured {name} {value!r}: not 4 hex digits")
    return value.upper()


def _attr(cert: x509.Certificate, oid: x509.ObjectIdentifier) -> str | None:
    attrs = cert.subject.get_attributes_for_oid(oid)
    return str(attrs[0].value) if attrs else None


def _spki(key: PublicKeyTypes) -> bytes:
    return key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
