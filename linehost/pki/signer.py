"""Signers (a private key behind an interface) and DAC assembly from a TBSCertificate."""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Protocol, runtime_checkable

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from linehost.errors import IssuerError, PkiError
from linehost.pki import der

#: AlgorithmIdentifier for ecdsa-with-SHA256 (RFC 5758: parameters absent).
ECDSA_WITH_SHA256_ALGID = bytes.fromhex("300a06082a8648ce3d040302")


@runtime_checkable
class Signer(Protocol):
    """A P-256 private key that signs with ECDSA-SHA256 and never leaves its home."""

    def public_key(self) -> ec.EllipticCurvePublicKey:
        """The public half of the signing key."""
        ...

    async def sign(self, data: bytes) -> bytes:
        """Return a DER ECDSA-SHA256 signature over `data`; raise IssuerError on failure."""
        ...

    async def aclose(self) -> None:
        """Release the key (session, worker thread); idempotent."""
        ...


class FileKeySigner:
    """A P-256 key read from a PEM file (PKCS#8 or SEC1, optionally encrypted)."""

    def __init__(self, private_key: ec.EllipticCurvePrivateKey) -> None:
        """Wrap an already loaded P-256 private key."""
        if not isinstance(private_key.curve, ec.SECP256R1):
            raise PkiError(f"signing key is not EC P-256 ({private_key.curve.name})")
        self._key = private_key

    @classmethod
    def load(cls, path: Path, passphrase: bytes | None = None) -> FileKeySigner:
        """Load the key at `path`; raise PkiError naming the file and the problem."""
        try:
            pem = path.read_bytes()
        except OSError as exc:
            raise PkiError(f"key {path}: unreadable ({exc.strerror or exc})") from None
        encrypted = b"ENCRYPTED" in pem
        if encrypted and passphrase is None:
            raise PkiError(f"key {path}: the key is encrypted and no passphrase was given")
        try:
            key = serialization.load_pem_private_key(pem, passphrase if encrypted else None)
        except (ValueError, TypeError, UnsupportedAlgorithm):
            if encrypted:
                raise PkiError(f"key {path}: wrong passphrase or damaged key") from None
            raise PkiError(f"key {path}: not a PEM private key") from None
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise PkiError(f"key {path}: not an EC key ({type(key).__name__})")
        if not isinstance(key.curve, ec.SECP256R1):
            raise PkiError(f"key {path}: not EC P-256 ({key.curve.name})")
        return cls(key)

    @property
    def private_key(self) -> ec.EllipticCurvePrivateKey:
        """The key itself, so cryptography can sign certificates in one step."""
        return self._key

    def public_key(self) -> ec.EllipticCurvePublicKey:
        """The public half of the signing key."""
        return self._key.public_key()

    async def sign(self, data: bytes) -> bytes:
        """Return a DER ECDSA-SHA256 signature over `data`."""
        # ~50 us of CPU: cheaper inline than a hop to a worker thread.
        return self._key.sign(data, ec.ECDSA(hashes.SHA256()))

    async def aclose(self) -> None:
        """Nothing to release."""


def assemble_certificate(tbs_der: bytes, signature_der: bytes) -> bytes:
    """`Certificate ::= SEQUENCE { tbsCertificate, signatureAlgorithm, signatureValue }` in DER."""
    return der.sequence(
        tbs_der, ECDSA_WITH_SHA256_ALGID, der.tlv(der.TAG_BIT_STRING, b"\x00" + signature_der)
    )


def tbs_certificate(builder: x509.CertificateBuilder) -> bytes:
    """The DER TBSCertificate `builder` describes, with ecdsa-with-SHA256 as its signature field."""
    # cryptography has no unsigned-TBS API: sign with a throwaway P-256 key and keep the TBS,
    # which holds everything but the outer signature.
    return builder.sign(_throwaway_key(), hashes.SHA256()).tbs_certificate_bytes


async def sign_certificate(
    builder: x509.CertificateBuilder, signer: Signer, *, direct: bool = True
) -> x509.Certificate:
    """Sign `builder` with ECDSA-SHA256 by `signer`; raise IssuerError if the signer fails.

    With `direct` and a FileKeySigner, cryptography signs in one step (same profile, faster);
    otherwise the TBSCertificate is signed through `signer.sign` and the certificate assembled.
    """
    if direct and isinstance(signer, FileKeySigner):
        return builder.sign(signer.private_key, hashes.SHA256())
    tbs = tbs_certificate(builder)
    signature = await signer.sign(tbs)
    try:
        return x509.load_der_x509_certificate(assemble_certificate(tbs, signature))
    except ValueError as exc:
        raise IssuerError(f"signer returned an unusable signature ({exc})") from None


@cache
def _throwaway_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def open_signer(
    key: str | Path,
    *,
    passphrase: bytes | None = None,
    pkcs11_module: str | None = None,
    pkcs11_pin: str | None = None,
) -> Signer:
    """A Pkcs11Signer for a `pkcs11:` URI, else a FileKeySigner for the path; raise PkiError."""
    if isinstance(key, Path) or not key.startswith("pkcs11:"):
        return FileKeySigner.load(Path(key), passphrase)
    if not pkcs11_module:
        raise PkiError("pkcs11 key: no PKCS#11 module path configured")
    if pkcs11_pin is None:
        raise PkiError("pkcs11 key: no PIN configured")
    try:
        from linehost.pki.pkcs11 import Pkcs11Signer  # lazily: the hsm extra is optional
    except ImportError:
        raise PkiError("pkcs11 key: python-pkcs11 is not installed (linehost[hsm])") from None
    return Pkcs11Signer.open(key, pkcs11_module, pkcs11_pin)
