"""What makes a simulated device unique: its UID and key pair, presented as a PEM CSR;
`IdentityPool` can make the keys ahead of a run."""

from __future__ import annotations

import hashlib
import random
from collections import deque
from dataclasses import dataclass
from typing import Final

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from linehost.sim.personalities import Curve

_CSR_SUBJECT: Final = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "linehost-sim")])
_CURVES: Final[dict[str, type[ec.EllipticCurve]]] = {"P-256": ec.SECP256R1, "P-384": ec.SECP384R1}


@dataclass(frozen=True, slots=True)
class DeviceIdentity:
    """What makes a device unique: its UID and its key pair, presented as a PEM CSR."""

    uid: str
    key: ec.EllipticCurvePrivateKey
    csr_pem: str
    public_key_der: bytes  # SubjectPublicKeyInfo, DER
    public_key_sha256: str  # lower-case hex


@dataclass(frozen=True, slots=True)
class KeyCsr:
    """A key pair with its CSR, made before the UID it will carry is known."""

    key: ec.EllipticCurvePrivateKey
    csr_pem: str
    public_key_der: bytes
    public_key_sha256: str


class IdentityPool:
    """Makes device identities; `pregenerate` moves the P-256 key + CSR cost ahead of the run."""

    def __init__(self) -> None:
        self._ready: deque[KeyCsr] = deque()

    def __len__(self) -> int:
        return len(self._ready)

    def pregenerate(self, count: int) -> None:
        """Generate `count` more P-256 keys with their CSRs (thread-safe with respect to `make`)."""
        for _ in range(count):
            self._ready.append(key_csr(ec.generate_private_key(ec.SECP256R1())))

    def make(
        self,
        uid: str,
        *,
        curve: Curve = "P-256",
        corrupt_signature: bool = False,
        key: ec.EllipticCurvePrivateKey | None = None,
    ) -> DeviceIdentity:
        """An identity for `uid`: a fresh key unless `key` is given (a cloned device)."""
        if key is not None:
            made = key_csr(key)
        elif curve == "P-256" and self._ready:
            made = self._ready.popleft()
        else:
            made = key_csr(ec.generate_private_key(_CURVES[curve]()))
        csr_pem = _corrupt_signature(made.csr_pem) if corrupt_signature else made.csr_pem
        return DeviceIdentity(uid, made.key, csr_pem, made.public_key_der, made.public_key_sha256)


def random_uid(rng: random.Random, digits: int = 16) -> str:
    """A random upper-case hex UID of `digits` digits (8..64)."""
    if not 8 <= digits <= 64:
        raise ValueError(f"a UID has 8 to 64 hex digits, not {digits}")
    return f"{rng.getrandbits(digits * 4):0{digits}X}"


def key_csr(key: ec.EllipticCurvePrivateKey) -> KeyCsr:
    """`key` with a CSR signed by it (the simulated firmware's subject)."""
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(_CSR_SUBJECT)
        .sign(key, hashes.SHA256())
    )
    spki = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    pem = csr.public_bytes(serialization.Encoding.PEM).decode("ascii")
    return KeyCsr(key, pem, spki, hashlib.sha256(spki).hexdigest())


def _corrupt_signature(csr_pem: str) -> str:
    """The same CSR with the last byte of its signature flipped: parses, never verifies."""
    der = bytearray(
        x509.load_pem_x509_csr(csr_pem.encode("ascii")).public_bytes(serialization.Encoding.DER)
    )
    der[-1] ^= 0x5A
    return (
        x509.load_der_x509_csr(bytes(der)).public_bytes(serialization.Encoding.PEM).decode("ascii")
    )
