"""Bytes to bounded text lines: LF-terminated, CR stripped, never more than MAX_LINE bytes held."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

MAX_LINE: Final = 1024


@dataclass(frozen=True, slots=True)
class LineTooLong:
    """Marker emitted once for a line that exceeded MAX_LINE bytes; its bytes are discarded."""

    length: int


Frame = str | LineTooLong


class LineFramer:
    """Splits a byte stream into lines; holds at most MAX_LINE bytes of an unfinished line."""

    __slots__ = ("_buf", "_discarded", "_discarding")

    def __init__(self) -> None:
        self._buf = bytearray()
        self._discarding = False
        self._discarded = 0

    def feed(self, data: bytes) -> list[Frame]:
        """Consume bytes; return the complete lines (and overflow markers) they finish."""
        out: list[Frame] = []
        start = 0
        end = len(data)
        while start < end:
            nl = data.find(b"\n", start)
            if nl < 0:
                self._hold(data[start:], out)
                break
            chunk = data[start:nl]
            start = nl + 1
            if self._discarding:
                self._discarding = False
                self._discarded = 0
                continue
            if self._buf:
                self._buf += chunk
                raw = bytes(self._buf)
                self._buf.clear()
            else:
                raw = chunk
            if raw.endswith(b"\r"):
                raw = raw[:-1]
            if len(raw) > MAX_LINE:
                out.append(LineTooLong(len(raw)))
                continue
            # Firmware logs may carry any byte; replacement keeps them printable and harmless.
            out.append(raw.decode("ascii", "replace"))
        return out

    def reset(self) -> None:
        """Forget any partial line (after reopening a port)."""
        self._buf.clear()
        self._discarding = False
        self._discarded = 0

    def _hold(self, tail: bytes, out: list[Frame]) -> None:
        if self._discarding:
            self._discarded += len(tail)
            return
        # One spare byte for a CR that the LF will strip.
        if len(self._buf) + len(tail) > MAX_LINE + 1:
            out.append(LineTooLong(len(self._buf) + len(tail)))
            self._buf.clear()
            self._discarding = True
            self._discarded = 0
            return
        self._buf += tail
