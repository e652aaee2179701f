"""Device CSR checks, as connectedhomeip's VerifyCertificateSigningRequest makes them."""

from __future__ import annotations

import hashlib

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import SignatureAlgorithmOID

from linehost.errors import CsrRejected
from linehost.records import CsrInfo

#: Upper bound on the PEM text of one CSR (jig protocol v1, step 3).
MAX_CSR_PEM_BYTES = 4096


def parse_csr(pem: str | bytes) -> CsrInfo:
    """Return the checked CSR; raise CsrRejected with a one-line message naming the failed rule."""
    data = pem.encode("ascii", "replace") if isinstance(pem, str) else bytes(pem)
    if len(data) > MAX_CSR_PEM_BYTES:
        raise CsrRejected(f"CSR too large ({len(data)} bytes > {MAX_CSR_PEM_BYTES})")
    try:
        csr = x509.load_pem_x509_csr(data)
    except ValueError:
        raise CsrRejected("CSR is not a valid PEM certificate request") from None
    try:
        key = csr.public_key()
    except (ValueError, UnsupportedAlgorithm):
        raise CsrRejected("CSR key is not EC P-256 (unsupported key)") from None
    if not isinstance(key, ec.EllipticCurvePublicKey):
        raise CsrRejected(f"CSR key is not EC P-256 ({_key_kind(key)})")
    if not isinstance(key.curve, ec.SECP256R1):
        raise CsrRejected(f"CSR key is not EC P-256 ({key.curve.name})")
    algorithm = csr.signature_algorithm_oid
    if algorithm != SignatureAlgorithmOID.ECDSA_WITH_SHA256:
        name = algorithm._name if algorithm._name != "Unknown OID" else algorithm.dotted_string
        raise CsrRejected(f"CSR signature algorithm is not ecdsa-with-SHA256 ({name})")
    if not csr.is_signature_valid:
        raise CsrRejected("CSR signature does not verify (no proof of possession)")
    # Re-encoded by cryptography: one canonical (uncompressed-point) form per key, the same
    # bytes the DAC will carry, so duplicate-key checks cannot be dodged by point compression.
    spki = key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return CsrInfo(
        public_key_der=spki,
        public_key_sha256=hashlib.sha256(spki).hexdigest(),
        csr_der=csr.public_bytes(serialization.Encoding.DER),
    )


def parse_public_key(pem: str | bytes) -> CsrInfo:
    """Return a bare device key (no proof of possession) once it is EC P-256; raise CsrRejected."""
    data = pem.encode("ascii", "replace") if isinstance(pem, str) else bytes(pem)
    if len(data) > MAX_CSR_PEM_BYTES:
        raise CsrRejected(f"public key too large ({len(data)} bytes > {MAX_CSR_PEM_BYTES})")
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, UnsupportedAlgorithm):
        raise CsrRejected("public key is not a valid PEM PUBLIC KEY") from None
    if not isinstance(key, ec.EllipticCurvePublicKey):
        raise CsrRejected(f"public key is not EC P-256 ({_key_kind(key)})")
    if not isinstance(key.curve, ec.SECP256R1):
        raise CsrRejected(f"public key is not EC P-256 ({key.curve.name})")
    spki = key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return CsrInfo(
        public_key_der=spki,
        public_key_sha256=hashlib.sha256(spki).hexdigest(),
        csr_der=b"",
        key_proof="none",
    )


def _key_kind(key: object) -> str:
    name = type(key).__name__.removeprefix("_")
    return name.removesuffix("PublicKey") or name
