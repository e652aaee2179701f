"""A simulated ESP32 + ATECC608 board running letter-protocol provisioning firmware.

`LetterDevice` wraps the sans-IO firmware (`protocol/letters_device.py`) with its personality's
quirks and speaks to the pty harness in the same actions as `SimulatedDevice` (v1).
"""

from __future__ import annotations

import random
from typing import Final

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from linehost.protocol.device import FLOW_TIMEOUT, Delivery
from linehost.protocol.letters_device import (
    Chunks,
    Command,
    LetterEvent,
    LetterFirmware,
    Reply,
    Stored,
    chunked,
)
from linehost.protocol.letters_wire import CMD_KEY, CMD_READY, CMD_SERIAL
from linehost.sim.checks import CheckResult, check_delivery
from linehost.sim.firmware import Action, DeviceLog, Leave, Unplug, Write
from linehost.sim.identity import DeviceIdentity
from linehost.sim.personalities import Personality

#: ESP-IDF style log lines (the only kind the letter host recognises amid answers).
_LOG_TEMPLATES: Final = (
    "I ({ms}) atecc: slot {r} locked",
    "W ({ms}) wifi: sta disconnected, reason {r}",
    "I ({ms}) app: heap free {n}",
    "D ({ms}) i2c: 0x60 ack after {r} us",
)


class LetterDevice:
    """One ECC608 board in a jig: the letter firmware plus its personality's quirks."""

    def __init__(
        self,
        identity: DeviceIdentity,
        personality: Personality,
        *,
        rng: random.Random | None = None,
        paa: x509.Certificate | None = None,
        flow_timeout: float = FLOW_TIMEOUT,
    ) -> None:
        self.identity = identity
        self.personality = personality
        self.paa = paa
        self.log = DeviceLog()
        self.uid_sent = identity.uid
        pem = (
            identity.key.public_key()
            .public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
            .decode("ascii")
        )
        self.public_key_pem = pem
        self.session = LetterFirmware(identity.uid, pem)
        self._rng = rng if rng is not None else random.Random()
        self._flow_timeout = flow_timeout
        self._gone = False
        self._asked_key = False
        self._leave_at: float | None = None

    @property
    def gone(self) -> bool:
        """True once the device no longer reacts."""
        return self._gone

    @property
    def out(self) -> bool:
        """Never taken out and put back (no reseat personality)."""
        return False

    @property
    def deadline(self) -> float | None:
        """When the operator takes the device out (`poll` then answers Leave)."""
        return None if self._gone else self._leave_at

    def put_back(self, now: float) -> list[Action]:
        """Not used: letter devices are not reseated."""
        return []

    def arrive(self, now: float) -> list[Action]:
        """Put in the jig: it boots (silently) and waits for letters."""
        self._leave_at = now + self._flow_timeout
        return []

    def poll(self, now: float) -> list[Action]:
        """The operator's patience: past the deadline the device is taken out."""
        if self._gone or self._leave_at is None or now < self._leave_at:
            return []
        self._gone = True
        return [Leave()]

    def receive(self, data: bytes, now: float) -> list[Action]:
        """Bytes from the host."""
        if self._gone:
            return []
        listening = self.session.listening
        out: list[Action] = []
        leave = False
        for event in self.session.receive(data):
            out += self._on_event(event, now)
            if isinstance(event, Command) and event.letter == CMD_SERIAL and self._asked_key:
                # Asked again after its attempt: the host checks for a swap; the operator swaps.
                leave = True
            if self._gone:
                return out
        if listening and not self.session.listening:  # `q`: provisioning is over
            self.log.finish_codes.append(0)
            self.log.finished_at = now
            self._leave_at = now + self.personality.stay_after_quit
            if self.personality.stay_after_quit <= 0:
                leave = True
        elif self.session.listening:
            self._leave_at = now + self._flow_timeout
        if leave:
            self._gone = True
            out.append(Leave())
        return out

    def _on_event(self, event: LetterEvent, now: float) -> list[Action]:
        if isinstance(event, Command):
            if event.letter == CMD_READY and self.log.first_sync_at is None:
                self.log.first_sync_at = now
            if event.letter == CMD_KEY:
                self._asked_key = True
            return []
        if isinstance(event, Reply):
            data = event.data
            if self.personality.noise and self._chance():
                data = self._log_line(now) + data
            return [Write(data)]
        if isinstance(event, Chunks):
            return self._print(event.chunks, now)
        return self._stored(event, now)

    def _print(self, chunks: tuple[bytes, ...], now: float) -> list[Action]:
        if self.personality.corrupt_readback:
            chunks = chunked(_corrupt_last_certificate(b"".join(chunks)))
        pause = self.personality.chunk_pause
        out: list[Action] = []
        noisy = self.personality.noise > 0
        forced = self._rng.randrange(1, len(chunks)) if noisy and len(chunks) > 1 else -1
        for i, chunk in enumerate(chunks):
            if i == forced or (noisy and i > 0 and self._chance()):
                out.append(Write(self._log_line(now)))  # a log line between two chunks
            out.append(Write(chunk, pause=pause))
        return out

    def _stored(self, event: Stored, now: float) -> list[Action]:
        if event.slot != "device":
            return []
        pai = self.session.slots.get("signer", b"")
        result = check_delivery(
            self.identity.public_key_der,
            Delivery(event.pem.decode("ascii", "replace"), pai.decode("ascii", "replace"), None),
            self.paa,
        )
        if result.dac_serial is not None:
            self.log.stored = result
        else:
            self.log.rejected = result
        after = self.personality.unplug_after_delivery
        if after is not None:
            self._gone = True
            return [Unplug(after, self.personality.unplug_seconds)]
        return []

    def _chance(self) -> bool:
        return self._rng.random() < self.personality.noise

    def _log_line(self, now: float) -> bytes:
        template = self._rng.choice(_LOG_TEMPLATES)
        text = template.format(
            ms=int(now * 1000) % 100_000_000,
            n=self._rng.randrange(20_000, 200_000),
            r=self._rng.randrange(1, 256),
        )
        return (text + "\n").encode("ascii")


def _corrupt_last_certificate(text: bytes) -> bytes:
    """The same PEM text with one base64 character of the last certificate's body changed."""
    begin = text.rfind(b"-----BEGIN CERTIFICATE-----")
    if begin < 0:
        return text
    at = begin + len(b"-----BEGIN CERTIFICATE-----\n") + 40
    if at >= len(text):
        return text
    swapped = b"B" if text[at : at + 1] == b"A" else b"A"
    return text[:at] + swapped + text[at + 1 :]


__all__ = ["CheckResult", "LetterDevice"]
