"""What a simulated firmware checks of a delivery before it stores it: the DAC is for its own
key and signed by the delivered PAI (and that by the PAA), and the `FD:` factory data is sound."""

from __future__ import annotations

import base64
import binascii
import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date
from typing import Final

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization

from linehost.onboarding.spake2p import compute_verifier, is_valid_passcode
from linehost.protocol.device import (
    Delivery,
)

FINISH_OK: Final = 0x000
FINISH_PARAMETER_ERROR: Final = 0x003


@dataclass(frozen=True, slots=True)
class CheckResult:
    """The firmware's verdict on a delivery; serial and sha256 are set for an acceptable DAC."""

    code: int
    detail: str
    dac_serial: str | None = None  # upper-case hex of the serial integer, no leading zeros
    dac_sha256: str | None = None  # lower-case hex of sha256(DER)


def check_delivery(
    public_key_der: bytes, delivery: Delivery, paa: x509.Certificate | None = None
) -> CheckResult:
    """What the firmware answers: 000 for a DAC on its own key signed by the delivered PAI."""
    try:
        dac = x509.load_pem_x509_certificate(delivery.dac_pem.encode("ascii"))
        pai = x509.load_pem_x509_certificate(delivery.pai_pem.encode("ascii"))
    except ValueError as exc:
        return CheckResult(FINISH_PARAMETER_ERROR, f"unparsable certificate: {exc}")
    own = dac.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    if own != public_key_der:
        return CheckResult(FINISH_PARAMETER_ERROR, "DAC is not for this device's key")
    try:
        dac.verify_directly_issued_by(pai)
    except (ValueError, TypeError, InvalidSignature):
        return CheckResult(FINISH_PARAMETER_ERROR, "DAC is not signed by the delivered PAI")
    if paa is not None:
        try:
            pai.verify_directly_issued_by(paa)
        except (ValueError, TypeError, InvalidSignature):
            return CheckResult(FINISH_PARAMETER_ERROR, "PAI is not signed by the PAA")
    der = dac.public_bytes(serialization.Encoding.DER)
    return CheckResult(
        FINISH_OK, "stored", format(dac.serial_number, "X"), hashlib.sha256(der).hexdigest()
    )


def check_factory_data(fields: Mapping[str, str]) -> str | None:
    """Why the firmware refuses these `FD:` fields (None when it stores them).

    Each known field must be well formed; with a passcode the verifier must match it.
    """
    try:
        if "serial_num" in fields:
            serial = fields["serial_num"]
            if not 1 <= len(serial) <= 32 or not all(" " <= c <= "~" for c in serial):
                return "serial_num is not 1..32 printable characters"
        if "discriminator" in fields and not 0 <= int(fields["discriminator"]) <= 4095:
            return "discriminator out of range"
        iterations = int(fields.get("spake2p_it", "1000"))
        if not 1000 <= iterations <= 100_000:
            return "spake2p_it out of range"
        salt = base64.b64decode(fields.get("spake2p_salt", "A" * 24), validate=True)
        if not 16 <= len(salt) <= 32:
            return "spake2p_salt is not 16..32 bytes"
        verifier = base64.b64decode(fields.get("spake2p_verifier", ""), validate=True)
        if "spake2p_verifier" in fields and len(verifier) != 97:
            return "spake2p_verifier is not 97 bytes"
        if "passcode" in fields:
            passcode = int(fields["passcode"])
            if not is_valid_passcode(passcode):
                return "passcode is not a valid setup passcode"
            if "spake2p_verifier" in fields and verifier != compute_verifier(
                passcode, salt, iterations
            ):
                return "spake2p_verifier does not match the passcode"
        if "rd_uid" in fields and not 16 <= len(bytes.fromhex(fields["rd_uid"])) <= 32:
            return "rd_uid is not 16..32 bytes"
        if "mfg_date" in fields:
            date.fromisoformat(fields["mfg_date"])
        if "hw_ver" in fields and not 0 <= int(fields["hw_ver"]) <= 65535:
            return "hw_ver out of range"
    except (ValueError, binascii.Error) as exc:
        return f"malformed factory data: {exc}"
    return None
