"""Setup passcodes and SPAKE2+ verifiers (w0 || L), as the Matter specification defines them."""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Callable
from typing import Final

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

#: The order n of the P-256 group: w0 and w1 are reduced modulo n.
P256_ORDER: Final = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551
#: Bytes of w0s and w1s drawn from PBKDF2 (group size + 8, so the reduction is unbiased).
W_LEN: Final = 40
VERIFIER_LEN: Final = 97  # w0 (32) || L (65, uncompressed point)
MIN_ITERATIONS: Final = 1000
MAX_ITERATIONS: Final = 100_000
MIN_SALT_LEN: Final = 16
MAX_SALT_LEN: Final = 32

PASSCODE_MIN: Final = 1
PASSCODE_MAX: Final = 99_999_998
#: Passcodes the specification forbids: trivially guessable patterns.
INVALID_PASSCODES: Final = frozenset(
    {
        0,
        11111111,
        22222222,
        33333333,
        44444444,
        55555555,
        66666666,
        77777777,
        88888888,
        99999999,
        12345678,
        87654321,
    }
)


def is_valid_passcode(passcode: int) -> bool:
    """True for a passcode a Matter device may use: 1..99,999,998 and not a forbidden pattern."""
    return PASSCODE_MIN <= passcode <= PASSCODE_MAX and passcode not in INVALID_PASSCODES


def generate_passcode(randbelow: Callable[[int], int] = secrets.randbelow) -> int:
    """A uniformly random valid passcode from a CSPRNG (forbidden values are drawn again)."""
    span = PASSCODE_MAX - PASSCODE_MIN + 1
    while True:
        candidate = PASSCODE_MIN + randbelow(span)
        if is_valid_passcode(candidate):
            return candidate


def generate_salt(length: int = MAX_SALT_LEN) -> bytes:
    """A fresh random PBKDF2 salt of 16..32 bytes."""
    if not MIN_SALT_LEN <= length <= MAX_SALT_LEN:
        raise ValueError(f"salt length must be {MIN_SALT_LEN}..{MAX_SALT_LEN} bytes, not {length}")
    return secrets.token_bytes(length)


def compute_verifier(passcode: int, salt: bytes, iterations: int) -> bytes:
    """The 97-byte SPAKE2+ verifier w0 || L for `passcode`.

    w0s || w1s = PBKDF2-HMAC-SHA256(passcode as 4 little-endian bytes, salt, iterations, 80);
    w0 = w0s mod n, w1 = w1s mod n, L = w1 * G on P-256 (uncompressed).
    """
    if not 0 <= passcode < 2**32:
        raise ValueError("passcode must fit 32 bits")
    if not MIN_SALT_LEN <= len(salt) <= MAX_SALT_LEN:
        raise ValueError(f"salt must be {MIN_SALT_LEN}..{MAX_SALT_LEN} bytes, not {len(salt)}")
    if not MIN_ITERATIONS <= iterations <= MAX_ITERATIONS:
        raise ValueError(f"iterations must be {MIN_ITERATIONS}..{MAX_ITERATIONS}, not {iterations}")
    ws = hashlib.pbkdf2_hmac("sha256", passcode.to_bytes(4, "little"), salt, iterations, 2 * W_LEN)
    w0 = int.from_bytes(ws[:W_LEN], "big") % P256_ORDER
    w1 = int.from_bytes(ws[W_LEN:], "big") % P256_ORDER
    if w1 == 0:  # probability 2**-256; L would be the point at infinity
        raise ValueError("degenerate w1; draw another salt")
    point = ec.derive_private_key(w1, ec.SECP256R1()).public_key()
    big_l = point.public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
    )
    return w0.to_bytes(32, "big") + big_l
