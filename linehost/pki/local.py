"""LocalIssuer: DACs signed on the spot by the PAI key (a key file or a PKCS#11 token)."""

from __future__ import annotations

import asyncio
import hashlib
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Final

import structlog
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.types import PublicKeyTypes

from linehost.config.placeholders import CN_PLACEHOLDERS
from linehost.errors import IssuerError, PkiError
from linehost.pki.dac_template import (
    P256_SPKI_LENGTH,
    P256_SPKI_PREFIX,
    BuilderFactory,
    DacTemplate,
    matches_builder,
)
from linehost.pki.matter import OID_MATTER_PID, OID_MATTER_VID
from linehost.pki.pai import IssuingPai, PaiIssuer, load_pai
from linehost.pki.pai import load_certificate as load_certificate  # its former home
from linehost.pki.profile import check_dac, describe
from linehost.pki.signer import (
    FileKeySigner,
    Signer,
    assemble_certificate,
    open_signer,
    tbs_certificate,
)
from linehost.records import CsrInfo, IssuedDac
from linehost.vidpid import parse_vid_pid

if TYPE_CHECKING:
    from linehost.config import PkiSection

_log = structlog.get_logger("linehost.pki")

#: Matter's "no well-defined expiration date" (RFC 5280 4.1.2.5, 99991231235959Z).
NO_EXPIRY = datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC)
#: ub-common-name (RFC 5280): the longest subject CN, counted in UTF-8 bytes as cryptography
#: and OpenSSL count it.
MAX_CN_LENGTH = 64

_CN_FIELDS: Final = ", ".join("{" + name + "}" for name in sorted(CN_PLACEHOLDERS))


class LocalIssuer(PaiIssuer):
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
        self._issuing = IssuingPai(pai, vid, pid)
        self._pai = pai
        self._signer = signer
        self._vid = vid
        self._pid = pid
        self._cn_template = cn_template
        self._not_after = not_after
        self._backdate = backdate
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
        self._builder_for = BuilderFactory(
            self._issuer_name,
            not_after,
            [x509.NameAttribute(OID_MATTER_VID, vid), x509.NameAttribute(OID_MATTER_PID, pid)],
            self._fixed_extensions,
            self._akid,
        )
        self._template: DacTemplate | None = DacTemplate(
            self._builder_for(
                1, self._pai_not_before, "0", ec.generate_private_key(ec.SECP256R1()).public_key()
            )
        )
        if not matches_builder(self._template, self._builder_for):
            # Never expected; if a cryptography release changes its encoding, stay correct.
            _log.warning("dac_template_disabled", reason="differs from cryptography's builder")
            self._template = None
        # A key in a file is ours and proven to be the PAI's at start-up: its signatures need
        # no re-verification. A token's signature is checked (a faulty HSM must not brick).
        self._verify_signatures = not isinstance(signer, FileKeySigner)

    @property
    def signer(self) -> Signer:
        """The PAI key, for the CRLs the line keeps (the issuer owns and closes it)."""
        return self._signer

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
        vid = _vid_pid_or_raise(vid, "vid")
        pid = _vid_pid_or_raise(pid, "pid")
        now = datetime.now(UTC)
        pai = load_pai(pai_cert, vid, pid, paa_cert=paa_cert, now=now).certificate
        if _spki(signer.public_key()) != _spki(pai.public_key()):
            raise PkiError(f"PAI certificate {pai_cert}: signing key does not match its public key")
        try:
            cn = cn_template.format(uid="0" * 64, vid=vid, pid=pid)  # CN_PLACEHOLDERS
        except (KeyError, IndexError, ValueError, AttributeError) as exc:
            raise PkiError(
                f"cn_template {cn_template!r}: not a valid template ({type(exc).__name__}: {exc}); "
                f"fields are {_CN_FIELDS}"
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

    async def issue(self, uid: str, csr: CsrInfo) -> IssuedDac:
        """Return a DAC for `uid` bound to `csr`'s key; raise IssuerError when it cannot."""
        now = datetime.now(UTC).replace(microsecond=0)
        if now > self._pai_not_after:
            raise IssuerError(f"PAI expired on {self._pai_not_after:%Y-%m-%d %H:%M:%S}")
        spki = csr.public_key_der
        if len(spki) != P256_SPKI_LENGTH or not spki.startswith(P256_SPKI_PREFIX):
            raise IssuerError("CSR public key is not an uncompressed EC P-256 key")
        cn = self._cn_template.format(uid=uid, vid=self._vid, pid=self._pid)
        size = len(cn.encode("utf-8"))
        if not 0 < size <= MAX_CN_LENGTH:
            raise IssuerError(f"DAC common name is {size} bytes in UTF-8 (1..{MAX_CN_LENGTH})")
        serial = x509.random_serial_number()
        not_before = max(now - self._backdate, self._pai_not_before)
        if self._template is not None:
            tbs = self._template.tbs(serial=serial, not_before=not_before, cn=cn, spki=spki)
        else:
            key = serialization.load_der_public_key(spki)
            assert isinstance(key, ec.EllipticCurvePublicKey)
            tbs = tbs_certificate(self._builder_for(serial, not_before, cn, key))
        try:
            signature = await self._signer.sign(tbs)
        except IssuerError:
            raise
        except Exception as exc:  # a pluggable signer: any failure is an issuer failure
            raise IssuerError(f"signer failed: {type(exc).__name__}: {exc}") from exc
        try:
            der = assemble_certificate(tbs, signature)
            dac = x509.load_der_x509_certificate(der)
        except ValueError as exc:
            raise IssuerError(f"signer returned an unusable signature ({exc})") from None
        violations = check_dac(dac, self._pai, verify_signature=self._verify_signatures)
        if violations:
            raise IssuerError(f"issued DAC fails the Matter profile: {describe(violations)}")
        return IssuedDac(
            pem=dac.public_bytes(serialization.Encoding.PEM).decode("ascii"),
            der=der,
            serial_hex=f"{serial:X}",
            sha256=hashlib.sha256(der).hexdigest(),
            public_key_sha256=hashlib.sha256(spki).hexdigest(),
            pai_sha256=self._issuing.sha256,
            vid=self._vid,
            pid=self._pid,
        )

    async def aclose(self) -> None:
        """Release the signer (HSM session, thread pool)."""
        await self._signer.aclose()


async def open_local_issuer(pki: PkiSection) -> LocalIssuer:
    """The LocalIssuer `[pki]` describes, its key opened and the PAI checked; raise PkiError."""
    assert pki.pai_key is not None  # the config insists for issuer = "local"
    # Logging in to an HSM blocks: keep the loop free.
    signer = await asyncio.to_thread(
        open_signer,
        pki.pai_key,
        passphrase=pki.passphrase(),
        pkcs11_module=pki.pkcs11_module,
        pkcs11_pin=pki.pin(),
    )
    try:
        return LocalIssuer.load(
            pki.pai_cert,
            signer,
            pki.vid,
            pki.pid,
            cn_template=pki.cn_template,
            not_after=pki.not_after,
            backdate=pki.backdate,
            paa_cert=pki.paa_cert,
        )
    except BaseException:
        await signer.aclose()
        raise


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


def _vid_pid_or_raise(value: str, name: str) -> str:
    try:
        return parse_vid_pid(value)
    except ValueError:
        raise PkiError(f"configured {name} {value!r}: not 4 hex digits") from None


def _spki(key: PublicKeyTypes) -> bytes:
    return key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
