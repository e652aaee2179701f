"""Passcodes at rest: AES-256-GCM under a key from a file or an environment variable.

From the one configured secret, HKDF derives an encryption key, a tag key (an HMAC of the
passcode that lets the database enforce uniqueness without seeing the passcode) and a key id
(recorded with each row, so a wrong key is reported as such rather than as corrupt data).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
from pathlib import Path
from typing import Final

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from linehost.config.types import SecretRef
from linehost.errors import ConfigError, LinehostError

KEY_LEN: Final = 32
NONCE_LEN: Final = 12
_SALT: Final = b"linehost onboarding v1"
_KEY: Final = "onboarding.passcode_key"


class SealError(LinehostError):
    """A sealed passcode cannot be opened (wrong key, or the stored value was altered)."""


class PasscodeSeal:
    """Encrypts, decrypts and tags setup passcodes under one secret key."""

    def __init__(self, secret: bytes) -> None:
        if len(secret) < KEY_LEN:
            raise ConfigError(f"the passcode key must have at least {KEY_LEN} bytes")
        self._aead = AESGCM(_derive(secret, b"passcode encryption"))
        self._tag_key = _derive(secret, b"passcode tag")
        self.key_id = _derive(secret, b"key id")[:8].hex()

    @classmethod
    def from_secret(cls, secret: SecretRef) -> PasscodeSeal:
        """The key a config secret names: 32 raw bytes, 64 hex digits or base64 of 32 bytes."""
        raw = secret.read()
        if raw is None:
            raise ConfigError(f"{secret.key}: no passcode key file or environment variable")
        if secret.env and not raw:
            raise ConfigError(f"environment variable {secret.env} (the passcode key) is not set")
        return cls(_parse_key(raw, secret.source))

    @classmethod
    def from_file(cls, path: Path) -> PasscodeSeal:
        """The key in a file (see from_secret)."""
        return cls.from_secret(SecretRef(_KEY, file=path))

    @classmethod
    def from_env(cls, name: str) -> PasscodeSeal:
        """The key in an environment variable (hex or base64)."""
        return cls.from_secret(SecretRef(_KEY, env=name))

    def seal(self, passcode: int, context: str) -> str:
        """base64(nonce || AES-GCM ciphertext), bound to `context` (e.g. the device UID)."""
        nonce = secrets.token_bytes(NONCE_LEN)
        sealed = self._aead.encrypt(nonce, str(passcode).encode(), context.encode())
        return base64.b64encode(nonce + sealed).decode()

    def open(self, sealed: str, context: str, key_id: str | None = None) -> int:
        """The passcode back; SealError when the key or the context does not fit."""
        if key_id is not None and key_id != self.key_id:
            raise SealError(
                f"passcode sealed under key {key_id}, but the configured key is {self.key_id}"
            )
        try:
            blob = base64.b64decode(sealed, validate=True)
            plain = self._aead.decrypt(blob[:NONCE_LEN], blob[NONCE_LEN:], context.encode())
        except (InvalidTag, ValueError, binascii.Error):
            raise SealError("stored passcode does not decrypt: wrong key or altered row") from None
        return int(plain.decode())

    def tag(self, passcode: int, vid: str, pid: str) -> str:
        """A keyed fingerprint of the passcode for one VID/PID (hex, 32 digits)."""
        message = f"{vid.upper()}:{pid.upper()}:{passcode}".encode()
        return hmac.new(self._tag_key, message, hashlib.sha256).hexdigest()[:32]


def generate_key_text() -> str:
    """A new random key as 64 hex digits (for a key file or an environment variable)."""
    return secrets.token_hex(KEY_LEN)


def _derive(secret: bytes, info: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=KEY_LEN, salt=_SALT, info=info).derive(secret)


def _parse_key(raw: bytes, where: str) -> bytes:
    text = raw.strip()
    if len(text) == 2 * KEY_LEN:
        try:
            return binascii.unhexlify(text)
        except binascii.Error:
            pass
    try:
        decoded = base64.b64decode(text, validate=True)
    except binascii.Error:
        decoded = b""
    if len(decoded) >= KEY_LEN:
        return decoded
    if len(raw) == KEY_LEN:
        return raw
    raise ConfigError(
        f"{where}: the passcode key must be {KEY_LEN} random bytes, as raw bytes, "
        f"{2 * KEY_LEN} hex digits or base64"
    )
