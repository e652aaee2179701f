"""The device side of the ECC608 letter protocol, sans-IO: host bytes in, answers and events out.

It behaves like the community ECC608 provisioning firmwares: it reacts to the first byte of a
read when that byte is a command letter, accumulates a PEM after `c`, `v` or `b` until its END
marker, prints stored PEMs in 65-byte chunks, and stops listening after `q`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from linehost.protocol.letters_wire import (
    CHUNK_BYTES,
    CMD_DEVICE,
    CMD_KEY,
    CMD_PRINT,
    CMD_PRINT_ROOT,
    CMD_QUIT,
    CMD_READY,
    CMD_ROOT,
    CMD_SERIAL,
    CMD_SIGNER,
    READY,
)

#: The firmware's buffer for one accumulated PEM; the rest of a longer one is dropped.
MAX_PEM_BYTES: Final = 4096
_END_MARKERS: Final = (b"-----END CERTIFICATE-----", b"-----END PUBLIC KEY-----")
#: Slot names of what `c`, `v` and `b` store.
SLOTS: Final = {CMD_SIGNER: "signer", CMD_DEVICE: "device", CMD_ROOT: "root"}


@dataclass(frozen=True, slots=True)
class Reply:
    """Bytes the firmware writes in one go."""

    data: bytes


@dataclass(frozen=True, slots=True)
class Chunks:
    """PEM text the firmware prints in CHUNK_BYTES pieces (`p`, `o`)."""

    chunks: tuple[bytes, ...]


@dataclass(frozen=True, slots=True)
class Command:
    """A command letter was taken (before its answer)."""

    letter: bytes


@dataclass(frozen=True, slots=True)
class Stored:
    """A PEM accumulated after `c`, `v` or `b` reached its END marker and was stored."""

    slot: str  # signer | device | root
    pem: bytes


LetterEvent = Reply | Chunks | Command | Stored


def chunked(text: bytes, size: int = CHUNK_BYTES) -> tuple[bytes, ...]:
    """`text` cut into pieces of `size` bytes (no line ends added)."""
    return tuple(text[i : i + size] for i in range(0, len(text), size))


class LetterFirmware:
    """One ECC608 board's provisioning firmware; `public_key_pem` is its slot-0 key."""

    def __init__(self, serial: str, public_key_pem: str) -> None:
        self.serial = serial
        self.public_key_pem = public_key_pem
        self.slots: dict[str, bytes] = {}
        self.listening = True
        self.flows = 0  # `k` commands answered
        self._into: str | None = None  # the slot a PEM is being accumulated for
        self._acc = bytearray()

    def reset(self) -> None:
        """Power cycle: listening again, nothing half-received (stored slots stay, like NVM)."""
        self.listening = True
        self._into = None
        self._acc.clear()

    def receive(self, data: bytes) -> list[LetterEvent]:
        """One read's worth of host bytes."""
        if not self.listening or not data:
            return []
        if self._into is not None:
            return self._accumulate(data)
        letter = data[:1]
        out: list[LetterEvent] = []
        if letter in SLOTS:
            out.append(Command(letter))
            self._into = SLOTS[letter]
            self._acc.clear()
            rest = data[1:]
            if rest:
                out += self._accumulate(rest)
            return out
        if letter not in (CMD_READY, CMD_SERIAL, CMD_KEY, CMD_PRINT, CMD_PRINT_ROOT, CMD_QUIT):
            return out  # not a command: the firmware ignores the read
        out.append(Command(letter))
        if letter == CMD_READY:
            out.append(Reply(f"{READY}\r\n".encode()))
        elif letter == CMD_SERIAL:
            out.append(Reply(self.serial.encode("ascii")))
        elif letter == CMD_KEY:
            self.flows += 1
            out.append(Reply(self.public_key_pem.encode("ascii")))
        elif letter == CMD_PRINT:
            text = self.slots.get("signer", b"") + self.slots.get("device", b"")
            out.append(Chunks(chunked(text)))
        elif letter == CMD_PRINT_ROOT:
            out.append(Chunks(chunked(self.slots.get("root", b""))))
        else:  # q
            self.listening = False
        return out

    def _accumulate(self, data: bytes) -> list[LetterEvent]:
        self._acc += data
        for marker in _END_MARKERS:
            end = self._acc.find(marker)
            if end >= 0:
                pem = bytes(self._acc[: end + len(marker)]).lstrip(b"\r\n") + b"\n"
                slot = self._into
                assert slot is not None
                self._into = None
                self._acc.clear()
                self.slots[slot] = pem
                return [Stored(slot, pem)]
        if len(self._acc) > MAX_PEM_BYTES:
            del self._acc[MAX_PEM_BYTES:]
        return []
