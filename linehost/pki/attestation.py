"""The crypto of the attestation extension (jig protocol v1.1): what is signed, and its check.

The device signs N || SHA-256(DAC DER as stored) with the DAC private key (ECDSA-SHA256, DER
signature). The host checks that signature with the public key of the DAC it recorded, over the
hash of the DAC it recorded: a device that stored another DAC, or does not hold the DAC key, fails.
"""

from __future__ import annotations

import hashlib

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

#: The detail of a signature that does not verify (the two causes cannot be told apart).
BAD_SIGNATURE = "bad signature: not made with the DAC key over the nonce and the DAC recorded"


def attestation_message(nonce: bytes, dac_der: bytes) -> bytes:
    """The bytes the device signs: N || SHA-256(DAC DER)."""
    return nonce + hashlib.sha256(dac_der).digest()


def sign_attestation(key: ec.EllipticCurvePrivateKey, nonce: bytes, dac_der: bytes) -> bytes:
    """The device's answer (simulator, tests): DER ECDSA-SHA256 over the attestation message."""
    return key.sign(attestation_message(nonce, dac_der), ec.ECDSA(hashes.SHA256()))


def verify_attestation(dac_pem: str, nonce: bytes, signature: bytes) -> str | None:
    """None when `signature` proves the DAC recorded (`dac_pem`); else why not, in a line."""
    try:
        dac = x509.load_pem_x509_certificate(dac_pem.encode("ascii"))
    except ValueError as exc:
        return f"recorded DAC unreadable: {exc}"
    key = dac.public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey):
        return "recorded DAC has no EC public key"
    der = dac.public_bytes(serialization.Encoding.DER)
    try:
        key.verify(signature, attestation_message(nonce, der), ec.ECDSA(hashes.SHA256()))
    except InvalidSignature:  # also a signature that is not DER ECDSA at all
        return BAD_SIGNATURE
    return None
