"""Signed checkpoints: their canonical encoding, the audit key, signing and verification.

A checkpoint commits to one line's audit log at one size: `{line, seq, head_hash, tree_size,
root_hash, at}`. The signed message is `MESSAGE_PREFIX` + the canonical JSON of those six fields
(docs/audit.md, "Checkpoints").
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Final, Protocol

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from linehost.errors import PkiError

MESSAGE_PREFIX: Final = b"linehost-audit-checkpoint/1\n"
ED25519: Final = "ed25519"
ECDSA_P256: Final = "ecdsa-p256-sha256"
BODY_FIELDS: Final = ("at", "head_hash", "line", "root_hash", "seq", "tree_size")

PublicKey = ed25519.Ed25519PublicKey | ec.EllipticCurvePublicKey

_HEX64 = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """One line's audit log at `tree_size` rows, with the signature over it."""

    line: str
    seq: int
    head_hash: str
    tree_size: int
    root_hash: str
    at: str
    algorithm: str
    key_id: str
    signature: str  # base64
    # Not signed: RFC 9162 PROOF(from_size, this tree), checked against both signed roots.
    consistency: tuple[int, tuple[str, ...]] | None = None

    def body(self) -> dict[str, Any]:
        """The six signed fields."""
        return {
            "at": self.at,
            "head_hash": self.head_hash,
            "line": self.line,
            "root_hash": self.root_hash,
            "seq": self.seq,
            "tree_size": self.tree_size,
        }

    def as_json(self) -> dict[str, Any]:
        """The checkpoint as its file, MQTT message and proof member: body + signature."""
        value = {
            **self.body(),
            "algorithm": self.algorithm,
            "key_id": self.key_id,
            "signature": self.signature,
        }
        if self.consistency is not None:
            value["consistency"] = {
                "from_size": self.consistency[0],
                "path": list(self.consistency[1]),
            }
        return value

    def signed_part(self) -> Checkpoint:
        """The checkpoint without its consistency proof (as proofs carry it)."""
        return replace(self, consistency=None)

    def encode(self) -> bytes:
        """The file / MQTT payload: the JSON object, compact, keys sorted, newline-terminated."""
        return json.dumps(self.as_json(), sort_keys=True, separators=(",", ":")).encode() + b"\n"


def signed_message(body: dict[str, Any]) -> bytes:
    """MESSAGE_PREFIX + canonical JSON (sorted keys, no spaces, ASCII) of the six fields."""
    return MESSAGE_PREFIX + json.dumps(
        {k: body[k] for k in BODY_FIELDS}, sort_keys=True, separators=(",", ":"), ensure_ascii=True
    ).encode("ascii")


def parse_checkpoint(value: Any) -> Checkpoint:
    """A Checkpoint from its JSON object; raise ValueError naming what is wrong."""
    if not isinstance(value, dict):
        raise ValueError("not a JSON object")
    strings = ("line", "head_hash", "root_hash", "at", "algorithm", "key_id", "signature")
    for name in strings:
        if not isinstance(value.get(name), str):
            raise ValueError(f"{name} is missing or not a string")
    for name in ("seq", "tree_size"):
        if type(value.get(name)) is not int or value[name] < 1:
            raise ValueError(f"{name} is missing or not a positive integer")
    for name in ("head_hash", "root_hash", "key_id"):
        if not _HEX64.fullmatch(value[name]):
            raise ValueError(f"{name} is not 64 lower-case hex digits")
    if value["seq"] != value["tree_size"]:
        raise ValueError("seq and tree_size differ")
    consistency = None
    if "consistency" in value:
        c = value["consistency"]
        if (
            not isinstance(c, dict)
            or type(c.get("from_size")) is not int
            or not 0 < c["from_size"] < value["tree_size"]
            or not isinstance(c.get("path"), list)
            or not all(isinstance(h, str) and _HEX64.fullmatch(h) for h in c["path"])
        ):
            raise ValueError("consistency is not {from_size, path} of a smaller tree")
        consistency = (c["from_size"], tuple(c["path"]))
    return Checkpoint(
        **{k: value[k] for k in (*strings, "seq", "tree_size")}, consistency=consistency
    )


def key_id_of(public_key: PublicKey) -> str:
    """SHA-256 hex of the DER SubjectPublicKeyInfo."""
    der = public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return hashlib.sha256(der).hexdigest()


def public_pem(public_key: PublicKey) -> str:
    """The SubjectPublicKeyInfo PEM."""
    return public_key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode()


def load_public_key(path: Path) -> PublicKey:
    """An Ed25519 or P-256 public key from a PEM file; raise PkiError naming the file."""
    try:
        pem = path.read_bytes()
    except OSError as exc:
        raise PkiError(f"audit public key {path}: unreadable ({exc.strerror or exc})") from None
    try:
        key = serialization.load_pem_public_key(pem)
    except (ValueError, UnsupportedAlgorithm):
        raise PkiError(f"audit public key {path}: not a PEM public key") from None
    return _supported(key, f"audit public key {path}")


def verify_checkpoint(checkpoint: Checkpoint, public_key: PublicKey) -> str | None:
    """None when `public_key` signed `checkpoint`; else why not."""
    if checkpoint.key_id != key_id_of(public_key):
        return f"signed by another key (key_id {checkpoint.key_id[:16]}…)"
    try:
        signature = base64.b64decode(checkpoint.signature, validate=True)
    except (binascii.Error, ValueError):
        return "signature is not base64"
    message = signed_message(checkpoint.body())
    try:
        if isinstance(public_key, ed25519.Ed25519PublicKey):
            if checkpoint.algorithm != ED25519:
                return f"algorithm {checkpoint.algorithm!r} does not match the Ed25519 key"
            public_key.verify(signature, message)
        else:
            if checkpoint.algorithm != ECDSA_P256:
                return f"algorithm {checkpoint.algorithm!r} does not match the P-256 key"
            public_key.verify(signature, message, ec.ECDSA(hashes.SHA256()))
    except InvalidSignature:
        return "signature does not verify with the audit public key"
    return None


class AuditKey(Protocol):
    """The audit key: signs checkpoints, never the PAI key, never on the database host."""

    algorithm: str
    key_id: str

    def public_key(self) -> PublicKey:
        """The public half, as auditors hold it."""
        ...

    async def sign(self, message: bytes) -> bytes:
        """The signature over `message` (Ed25519 raw, or DER ECDSA-SHA256)."""
        ...

    async def aclose(self) -> None:
        """Release the key (HSM session); idempotent."""
        ...


async def sign_checkpoint(
    key: AuditKey, body: dict[str, Any], consistency: tuple[int, tuple[str, ...]] | None = None
) -> Checkpoint:
    """Sign the six fields of `body` with `key` (and attach `consistency`, unsigned)."""
    signature = await key.sign(signed_message(body))
    return Checkpoint(
        **{k: body[k] for k in BODY_FIELDS},
        algorithm=key.algorithm,
        key_id=key.key_id,
        signature=base64.b64encode(signature).decode(),
        consistency=consistency,
    )


class Ed25519FileKey:
    """An Ed25519 audit key read from a PEM file."""

    algorithm = ED25519

    def __init__(self, key: ed25519.Ed25519PrivateKey) -> None:
        """Wrap a loaded key."""
        self._key = key
        self.key_id = key_id_of(key.public_key())

    def public_key(self) -> PublicKey:
        """The public half."""
        return self._key.public_key()

    async def sign(self, message: bytes) -> bytes:
        """64-byte Ed25519 signature."""
        return self._key.sign(message)

    async def aclose(self) -> None:
        """Nothing to release."""


class EcdsaKey:
    """A P-256 audit key behind linehost's Signer (a PEM file or a PKCS#11 object)."""

    algorithm = ECDSA_P256

    def __init__(self, signer: Any) -> None:
        """Wrap a linehost.pki.signer.Signer."""
        self._signer = signer
        self.key_id = key_id_of(signer.public_key())

    def public_key(self) -> PublicKey:
        """The public half."""
        key: ec.EllipticCurvePublicKey = self._signer.public_key()
        return key

    async def sign(self, message: bytes) -> bytes:
        """DER ECDSA-SHA256 signature."""
        signature: bytes = await self._signer.sign(message)
        return signature

    async def aclose(self) -> None:
        """Release the signer."""
        await self._signer.aclose()


def open_audit_key(
    key: str,
    *,
    passphrase: bytes | None = None,
    pkcs11_module: str | None = None,
    pkcs11_pin: str | None = None,
) -> AuditKey:
    """The audit key at a PEM path (Ed25519 or P-256, optionally encrypted) or a `pkcs11:` URI
    (P-256); raise PkiError (blocking: an HSM login)."""
    from linehost.pki.signer import FileKeySigner, open_signer

    if key.startswith("pkcs11:"):
        return EcdsaKey(open_signer(key, pkcs11_module=pkcs11_module, pkcs11_pin=pkcs11_pin))
    path = Path(key)
    try:
        pem = path.read_bytes()
    except OSError as exc:
        raise PkiError(f"audit key {path}: unreadable ({exc.strerror or exc})") from None
    encrypted = b"ENCRYPTED" in pem
    if encrypted and passphrase is None:
        raise PkiError(f"audit key {path}: the key is encrypted and no passphrase was given")
    try:
        loaded = serialization.load_pem_private_key(pem, passphrase if encrypted else None)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        if encrypted:
            raise PkiError(f"audit key {path}: wrong passphrase or damaged key") from None
        raise PkiError(f"audit key {path}: not a PEM private key") from None
    if isinstance(loaded, ed25519.Ed25519PrivateKey):
        return Ed25519FileKey(loaded)
    if isinstance(loaded, ec.EllipticCurvePrivateKey) and isinstance(loaded.curve, ec.SECP256R1):
        return EcdsaKey(FileKeySigner(loaded))
    raise PkiError(f"audit key {path}: neither Ed25519 nor EC P-256")


def generate_key_pair(out: Path, algorithm: str = ED25519) -> tuple[Path, Path, PublicKey]:
    """Write `audit.key` (PKCS#8 PEM, mode 0600) and `audit.pub` in `out`, never overwriting."""
    private: ed25519.Ed25519PrivateKey | ec.EllipticCurvePrivateKey
    if algorithm == ED25519:
        private = ed25519.Ed25519PrivateKey.generate()
    elif algorithm == ECDSA_P256:
        private = ec.generate_private_key(ec.SECP256R1())
    else:
        raise PkiError(f"audit key algorithm must be {ED25519} or {ECDSA_P256}")
    out.mkdir(parents=True, exist_ok=True)
    key_path, pub_path = out / "audit.key", out / "audit.pub"
    key_pem = private.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    public = private.public_key()
    for path in (key_path, pub_path):
        if path.exists():
            raise PkiError(f"{path} exists already: not overwriting an audit key")
    for path, data, mode in ((key_path, key_pem, 0o600), (pub_path, public_pem(public).encode(),
                                                            0o644)):  # fmt: skip
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
        except FileExistsError:
            raise PkiError(f"{path} exists already: not overwriting an audit key") from None
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
    return key_path, pub_path, public


def _supported(key: Any, what: str) -> PublicKey:
    if isinstance(key, ed25519.Ed25519PublicKey):
        return key
    if isinstance(key, ec.EllipticCurvePublicKey) and isinstance(key.curve, ec.SECP256R1):
        return key
    raise PkiError(f"{what}: neither Ed25519 nor EC P-256")
