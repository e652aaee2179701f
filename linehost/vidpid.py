"""Matter vendor and product ids as text: the one check of "4 hex digits"."""

from __future__ import annotations

import re
from typing import Final

_HEX4: Final = re.compile(r"[0-9A-Fa-f]{4}")
_UPPER_HEX4: Final = re.compile(r"[0-9A-F]{4}")


def parse_vid_pid(value: str) -> str:
    """`value` as 4 upper-case hex digits; ValueError unless it is exactly 4 hex digits."""
    if not _HEX4.fullmatch(value):
        raise ValueError("must be exactly 4 hex digits, e.g. 'FFF1'")
    return value.upper()


def is_vid_pid(value: str) -> bool:
    """True when `value` is exactly 4 hex digits (either case)."""
    return _HEX4.fullmatch(value) is not None


def is_certificate_vid_pid(value: str) -> bool:
    """True when `value` is a VID/PID as a Matter certificate spells it: 4 upper-case hex."""
    return _UPPER_HEX4.fullmatch(value) is not None
