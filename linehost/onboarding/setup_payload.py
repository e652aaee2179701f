"""Onboarding payloads: the QR code text (`MT:` + Base38) and the manual pairing code."""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum, IntFlag
from typing import Final

from linehost.onboarding.spake2p import is_valid_passcode

QR_PREFIX: Final = "MT:"
BASE38_ALPHABET: Final = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ-."
_BASE38_INDEX: Final = {c: i for i, c in enumerate(BASE38_ALPHABET)}
#: Base38 characters per chunk of 1, 2 or 3 bytes.
_CHARS_FOR_BYTES: Final = {1: 2, 2: 4, 3: 5}
_BYTES_FOR_CHARS: Final = {v: k for k, v in _CHARS_FOR_BYTES.items()}

# The packed QR payload, least significant bit first: 88 bits in 11 bytes.
_FIELDS: Final = (
    ("version", 3),
    ("vid", 16),
    ("pid", 16),
    ("flow", 2),
    ("discovery", 8),
    ("discriminator", 12),
    ("passcode", 27),
    ("padding", 4),
)
_PAYLOAD_BITS: Final = sum(width for _, width in _FIELDS)
_PAYLOAD_BYTES: Final = _PAYLOAD_BITS // 8

# Verhoeff's dihedral-group tables (multiplication d, permutation p, inverse).
_D: Final = (
    (0, 1, 2, 3, 4, 5, 6, 7, 8, 9),
    (1, 2, 3, 4, 0, 6, 7, 8, 9, 5),
    (2, 3, 4, 0, 1, 7, 8, 9, 5, 6),
    (3, 4, 0, 1, 2, 8, 9, 5, 6, 7),
    (4, 0, 1, 2, 3, 9, 5, 6, 7, 8),
    (5, 9, 8, 7, 6, 0, 4, 3, 2, 1),
    (6, 5, 9, 8, 7, 1, 0, 4, 3, 2),
    (7, 6, 5, 9, 8, 2, 1, 0, 4, 3),
    (8, 7, 6, 5, 9, 3, 2, 1, 0, 4),
    (9, 8, 7, 6, 5, 4, 3, 2, 1, 0),
)
_P: Final = (
    (0, 1, 2, 3, 4, 5, 6, 7, 8, 9),
    (1, 5, 7, 6, 2, 8, 3, 0, 9, 4),
    (5, 8, 0, 3, 7, 9, 6, 1, 4, 2),
    (8, 9, 1, 6, 0, 4, 3, 5, 2, 7),
    (9, 4, 5, 3, 1, 2, 6, 8, 7, 0),
    (4, 2, 8, 6, 5, 7, 3, 9, 0, 1),
    (2, 7, 9, 3, 8, 0, 6, 4, 1, 5),
    (7, 0, 4, 6, 9, 1, 3, 2, 5, 8),
)
_INV: Final = (0, 4, 3, 2, 1, 5, 6, 7, 8, 9)


class CommissioningFlow(IntEnum):
    """How a commissioner reaches the device's commissioning mode."""

    STANDARD = 0
    USER_INTENT = 1
    CUSTOM = 2


class Discovery(IntFlag):
    """Discovery capabilities bitmap of the QR payload."""

    SOFT_AP = 0x01
    BLE = 0x02
    ON_NETWORK = 0x04


@dataclass(frozen=True, slots=True)
class SetupPayload:
    """What the QR code carries (the manual code carries a subset)."""

    vid: int
    pid: int
    discriminator: int  # 12 bits
    passcode: int
    flow: CommissioningFlow = CommissioningFlow.STANDARD
    discovery: Discovery = Discovery.BLE
    version: int = 0

    def __post_init__(self) -> None:
        for name, value, bits in (
            ("vid", self.vid, 16),
            ("pid", self.pid, 16),
            ("discriminator", self.discriminator, 12),
            ("version", self.version, 3),
        ):
            if not 0 <= value < 2**bits:
                raise ValueError(f"{name} {value} does not fit {bits} bits")
        if not is_valid_passcode(self.passcode):
            raise ValueError("invalid setup passcode")
        if not 0 <= int(self.discovery) < 256:
            raise ValueError("discovery capabilities do not fit 8 bits")

    @property
    def short_discriminator(self) -> int:
        """The 4 most significant bits of the discriminator (all the manual code carries)."""
        return self.discriminator >> 8

    def qr_code(self) -> str:
        """`MT:` + Base38 of the packed 88-bit payload."""
        values = {
            "version": self.version,
            "vid": self.vid,
            "pid": self.pid,
            "flow": int(self.flow),
            "discovery": int(self.discovery),
            "discriminator": self.discriminator,
            "passcode": self.passcode,
            "padding": 0,
        }
        packed, offset = 0, 0
        for name, width in _FIELDS:
            packed |= values[name] << offset
            offset += width
        return QR_PREFIX + base38_encode(packed.to_bytes(_PAYLOAD_BYTES, "little"))

    def manual_code(self) -> str:
        """The manual pairing code: 11 digits, or 21 with VID/PID for a custom flow."""
        with_ids = self.flow is CommissioningFlow.CUSTOM
        short = self.short_discriminator
        digits = (
            f"{(int(with_ids) << 2) | (short >> 2)}"
            f"{((short & 0x3) << 14) | (self.passcode & 0x3FFF):05d}"
            f"{self.passcode >> 14:04d}"
        )
        if with_ids:
            digits += f"{self.vid:05d}{self.pid:05d}"
        return digits + verhoeff_check_digit(digits)


@dataclass(frozen=True, slots=True)
class ManualCode:
    """What a manual pairing code carries."""

    short_discriminator: int
    passcode: int
    vid: int | None = None
    pid: int | None = None


def parse_qr_code(text: str) -> SetupPayload:
    """Decode `MT:...` text back into its payload (one payload, no TLV extension)."""
    if not text.startswith(QR_PREFIX):
        raise ValueError("QR code text must start with MT:")
    data = base38_decode(text[len(QR_PREFIX) :])
    if len(data) < _PAYLOAD_BYTES:
        raise ValueError("QR payload too short")
    packed = int.from_bytes(data[:_PAYLOAD_BYTES], "little")
    values: dict[str, int] = {}
    offset = 0
    for name, width in _FIELDS:
        values[name] = (packed >> offset) & ((1 << width) - 1)
        offset += width
    return SetupPayload(
        vid=values["vid"],
        pid=values["pid"],
        discriminator=values["discriminator"],
        passcode=values["passcode"],
        flow=CommissioningFlow(values["flow"]),
        discovery=Discovery(values["discovery"]),
        version=values["version"],
    )


def parse_manual_code(text: str) -> ManualCode:
    """Decode an 11- or 21-digit manual pairing code (dashes and spaces allowed)."""
    digits = text.replace("-", "").replace(" ", "")
    if not digits.isdigit() or len(digits) not in (11, 21):
        raise ValueError("a manual pairing code has 11 or 21 digits")
    if not verhoeff_valid(digits):
        raise ValueError("manual pairing code check digit is wrong")
    first = int(digits[0])
    with_ids = bool(first & 0x4)
    if with_ids != (len(digits) == 21):
        raise ValueError("manual pairing code length does not match its VID/PID flag")
    chunk2, chunk3 = int(digits[1:6]), int(digits[6:10])
    short = ((first & 0x3) << 2) | (chunk2 >> 14)
    passcode = (chunk2 & 0x3FFF) | (chunk3 << 14)
    if with_ids:
        return ManualCode(short, passcode, int(digits[10:15]), int(digits[15:20]))
    return ManualCode(short, passcode)


def base38_encode(data: bytes) -> str:
    """Matter Base38: each 3-byte chunk (little-endian) as 5 characters, least significant first."""
    out: list[str] = []
    for start in range(0, len(data), 3):
        chunk = data[start : start + 3]
        value = int.from_bytes(chunk, "little")
        for _ in range(_CHARS_FOR_BYTES[len(chunk)]):
            value, digit = divmod(value, 38)
            out.append(BASE38_ALPHABET[digit])
    return "".join(out)


def base38_decode(text: str) -> bytes:
    """The inverse of `base38_encode`; raises ValueError on bad characters or lengths."""
    out = bytearray()
    for start in range(0, len(text), 5):
        chunk = text[start : start + 5]
        size = _BYTES_FOR_CHARS.get(len(chunk))
        if size is None:
            raise ValueError(f"Base38 text has an invalid length {len(text)}")
        value = 0
        for char in reversed(chunk):
            digit = _BASE38_INDEX.get(char)
            if digit is None:
                raise ValueError(f"{char!r} is not a Base38 character")
            value = value * 38 + digit
        if value >= 1 << (8 * size):
            raise ValueError("Base38 chunk overflows its byte count")
        out += value.to_bytes(size, "little")
    return bytes(out)


def verhoeff_check_digit(digits: str) -> str:
    """The Verhoeff check digit of a decimal string."""
    check = 0
    for i, char in enumerate(reversed(digits)):
        check = _D[check][_P[(i + 1) % 8][int(char)]]
    return str(_INV[check])


def verhoeff_valid(digits: str) -> bool:
    """True when the last digit is the Verhoeff check digit of the others."""
    check = 0
    for i, char in enumerate(reversed(digits)):
        check = _D[check][_P[i % 8][int(char)]]
    return check == 0
