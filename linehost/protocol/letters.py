"""The host side of the ECC608 letter protocol as a state machine: bytes and time in, effects out.

The firmware frames nothing: the host sends single command letters and reads bare answers (the
line `Ready.`, 18 hex characters, PEM text in 65-byte chunks) amid the firmware's log lines
(`I (1234) tag: text`). The device has no CSR; it presents a bare public key
(`KeyPresented.key_proof == "none"`). `LetterSession` implements `protocol.session.JigProtocol`;
docs/protocol.md ("The ECC608 letter dialect") describes the conversation.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections import deque
from enum import Enum, auto
from typing import Final

from linehost.protocol.gate import Admission, DeviceGate, GatedSession
from linehost.protocol.letters_wire import (
    BEGIN_CERTIFICATE,
    BEGIN_PUBLIC_KEY,
    CMD_DEVICE,
    CMD_KEY,
    CMD_PRINT,
    CMD_QUIT,
    CMD_READY,
    CMD_ROOT,
    CMD_SERIAL,
    CMD_SIGNER,
    END_CERTIFICATE,
    END_PUBLIC_KEY,
    SERIAL_CHARS,
)
from linehost.protocol.outcomes import JigState, Outcome
from linehost.protocol.session import (
    AttemptEnded,
    AttemptStarted,
    Effect,
    KeyPresented,
    SendBytes,
    Timing,
)

#: The PEM public key a device may send (spec: bounded at 1 KiB).
MAX_KEY_BYTES: Final = 1024
#: Output the host keeps for one answer (logs included); more is a protocol error.
MAX_ANSWER_BYTES: Final = 16 * 1024
#: While syncing only the tail matters (the `Ready.` line).
SYNC_BUFFER_BYTES: Final = 256
TRANSCRIPT_LINES: Final = 400
TRANSCRIPT_LINE_CHARS: Final = 200
READBACK_MISMATCH: Final = "readback mismatch"
READBACK_TIMEOUT: Final = "readback timeout"
DEFAULT_TIMING: Final = Timing()

#: An ESP-IDF log line (colour codes and all), wherever it lands in the stream (base64 has no
#: space, parenthesis or escape).
LOG_LINE: Final = re.compile(r"(?:\x1b\[[0-9;]*m)?[EWIDV] \(\d+\) [^\n]*\n")
#: The start of a log line not yet complete, at the end of what was read so far.
_LOG_TAIL: Final = re.compile(
    r"\x1b(?:\[[0-9;]*(?:m(?:[EWIDV](?: [^\n]*)?)?)?)?\Z|[EWIDV] (?:\(\d*(?:\)[^\n]*)?)?\Z"
)
_READY_LINE: Final = re.compile(r"(?:^|[\r\n])Ready\.(?=[\r\n]|\Z)")
_SERIAL: Final = re.compile(r"[0-9A-Fa-f]{18}")
_HEX: Final = frozenset("0123456789ABCDEFabcdef")
_CERTIFICATE: Final = re.compile(
    re.escape(BEGIN_CERTIFICATE) + r"(.*?)" + re.escape(END_CERTIFICATE), re.DOTALL
)
_BASE64_BODY: Final = re.compile(r"[A-Za-z0-9+/]*={0,2}")


class Phase(Enum):
    """Where the conversation with the current device stands."""

    CLOSED = auto()
    SYNCING = auto()  # `r` every sync_interval until `Ready.`
    IDENTIFYING = auto()  # `s` sent, reading 18 hex characters
    KEY = auto()  # `k` sent, reading the PEM public key
    ISSUING = auto()  # the runner decides: deliver() or reject()
    DELIVERING = auto()  # `b`, `c`, `v` and their PEMs, each after letter_gap
    READBACK = auto()  # `p` sent, reassembling the two certificates


class LetterSession(GatedSession):
    """One jig's conversation in letters, device after device, while its port stays open."""

    def __init__(self, timing: Timing = DEFAULT_TIMING) -> None:
        self.timing = timing
        self.phase = Phase.CLOSED
        self.uid: str | None = None
        self.deadline: float | None = None
        self._gate = DeviceGate(timing)  # a letter device is turned away by saying nothing
        self._buf = bytearray()
        self._queue: deque[bytes] = deque()
        self._next_send: float | None = None
        self._expected: tuple[bytes, bytes] | None = None  # PAI DER, DAC DER as sent
        self._dac_pem = b""
        self._delivered = False
        self._transcript: deque[str] = deque(maxlen=TRANSCRIPT_LINES)
        self._rx_line = bytearray()

    # --- JigProtocol -------------------------------------------------------------------------

    @property
    def in_attempt(self) -> bool:
        """True between a valid serial number and the attempt's end."""
        return self.phase in (Phase.KEY, Phase.ISSUING, Phase.DELIVERING, Phase.READBACK)

    @property
    def ready_for_device(self) -> bool:
        """Closed, or syncing with no finished device held."""
        return self.phase is Phase.CLOSED or (
            self.phase is Phase.SYNCING and not self._gate.holding
        )

    @property
    def buffered(self) -> int:
        """Bytes of the current answer held (never more than MAX_ANSWER_BYTES)."""
        return len(self._buf)

    def next_wakeup(self) -> float | None:
        """The loop time at which on_timer() must be called next."""
        if self.phase is Phase.SYNCING:
            return self._gate.next_sync
        if self.phase is Phase.DELIVERING:
            return self._next_send
        return self.deadline

    def open(self, now: float) -> list[Effect]:
        """The port was just opened: start syncing (the dialect has no abort command)."""
        out: list[Effect] = []
        self._gate.answered()
        self._enter_sync(now, now, out)
        return out

    def on_bytes(self, data: bytes, now: float) -> list[Effect]:
        """Handle bytes read from the port (any chunking)."""
        out: list[Effect] = []
        phase = self.phase
        if phase is Phase.CLOSED or not data:
            return out
        if self.in_attempt:
            self._record(data)
        if phase is Phase.SYNCING:
            self._buf += data
            del self._buf[:-SYNC_BUFFER_BYTES]
            if _READY_LINE.search(_text(self._buf)):
                self._gate.answered()
                self._buf.clear()
                self.phase = Phase.IDENTIFYING
                self.deadline = now + self.timing.csr_timeout
                out.append(SendBytes(CMD_SERIAL))
            return out
        if phase in (Phase.ISSUING, Phase.DELIVERING):
            return out  # log lines while the DAC is made or sent: transcript only
        self._buf += data
        if len(self._buf) > MAX_ANSWER_BYTES:
            if phase is Phase.IDENTIFYING:
                self._buf.clear()
                out.append(AttemptStarted(None, now, "none"))
                self._end_attempt(
                    Outcome.PROTOCOL_ERROR, "no serial number in the answer to s", now, out
                )
            else:
                self._end_attempt(
                    Outcome.PROTOCOL_ERROR,
                    f"answer longer than {MAX_ANSWER_BYTES} bytes",
                    now,
                    out,
                )
            return out
        if phase is Phase.IDENTIFYING:
            self._on_serial(now, out)
        elif phase is Phase.KEY:
            self._on_key(now, out)
        elif phase is Phase.READBACK:
            self._on_readback(now, out)
        return out

    def on_timer(self, now: float) -> list[Effect]:
        """Time passed: sync again, send the next part of a delivery, or apply a timeout."""
        out: list[Effect] = []
        phase = self.phase
        if phase is Phase.SYNCING:
            if self._gate.sync_due(now, out):
                self._buf.clear()
                out.append(SendBytes(CMD_READY))
        elif phase is Phase.DELIVERING:
            if self._next_send is not None and now >= self._next_send:
                self._send_next(now, out)
        elif self.deadline is not None and now >= self.deadline:
            if phase is Phase.IDENTIFYING:
                # `Ready.` without a serial number: no attempt exists yet, just start over.
                self._enter_sync(now, now, out)
            elif phase is Phase.KEY:
                if BEGIN_PUBLIC_KEY in _clean(self._buf):
                    self._end_attempt(
                        Outcome.PROTOCOL_ERROR, "public key PEM block never closed", now, out
                    )
                else:
                    self._end_attempt(Outcome.TIMEOUT, "csr", now, out)
            elif phase is Phase.READBACK:
                self._end_attempt(Outcome.DEVICE_ERROR, READBACK_TIMEOUT, now, out)
        return out

    def deliver(
        self,
        dac_pem: str,
        pai_pem: str,
        now: float,
        *,
        cd_b64: str | None = None,  # the dialect has no command for it
        factory_data: tuple[tuple[str, str], ...] = (),  # nor for these
        root_key_pem: str | None = None,
    ) -> list[Effect]:
        """Send `b` + root key (if any), `c` + PAI, `v` + DAC, then `p`, each after letter_gap."""
        if self.phase is not Phase.ISSUING:
            return []
        try:
            self._expected = (_pem_der(pai_pem), _pem_der(dac_pem))
        except ValueError as exc:  # never from our issuers; refuse rather than send junk
            out: list[Effect] = []
            self._end_attempt(Outcome.ISSUER_ERROR, f"unusable certificate: {exc}", now, out)
            return out
        queue: deque[bytes] = deque()
        if root_key_pem is not None:
            queue += (CMD_ROOT, _pem_bytes(root_key_pem))
        self._dac_pem = _pem_bytes(dac_pem)
        queue += (CMD_SIGNER, _pem_bytes(pai_pem), CMD_DEVICE, self._dac_pem, CMD_PRINT)
        self._queue = queue
        self.phase = Phase.DELIVERING
        self.deadline = None
        out = []
        self._send_next(now, out)
        return out

    def reject(self, outcome: Outcome, detail: str, now: float) -> list[Effect]:
        """Abandon the device that presented its key, without delivering."""
        if self.phase is not Phase.ISSUING:
            return []
        out: list[Effect] = []
        self._end_attempt(outcome, detail, now, out)
        return out

    def abort(self, outcome: Outcome, detail: str, now: float) -> list[Effect]:
        """Abandon the current attempt (shutdown grace over)."""
        out: list[Effect] = []
        if self.in_attempt:
            self._end_attempt(outcome, detail, now, out)
        return out

    def close(self, outcome: Outcome, detail: str, now: float) -> list[Effect]:
        """The port is gone: end any attempt; the jig goes offline."""
        out: list[Effect] = []
        if self.in_attempt:
            self._finish(outcome, detail, out)
        self.phase = Phase.CLOSED
        self.deadline = None
        self._queue.clear()
        self._next_send = None
        self._gate.show(JigState.OFFLINE, None, out)
        return out

    def stop(self, now: float) -> list[Effect]:
        """The host takes no more devices; there is nothing to tell a letter device."""
        return []

    # --- phases ------------------------------------------------------------------------------

    def _on_serial(self, now: float, out: list[Effect]) -> None:
        text = _READY_LINE.sub("\n", _clean(self._buf))
        pieces = text.split("\n")
        tail = pieces.pop()
        found: str | None = None
        for piece in pieces:  # complete lines: a bare serial, or noise
            piece = piece.strip("\r ")
            if _SERIAL.fullmatch(piece):
                found = piece
                break
        if found is None:
            tail = tail.strip("\r ")
            if len(tail) < SERIAL_CHARS:
                return  # more to come
            head = tail[:SERIAL_CHARS]
            longer = len(tail) > SERIAL_CHARS and tail[SERIAL_CHARS] in _HEX
            if not _SERIAL.fullmatch(head) or longer:
                self._buf.clear()
                out.append(AttemptStarted(None, now, "none"))
                self.phase = Phase.KEY  # an attempt, for the record
                self._record(bytes(tail[:TRANSCRIPT_LINE_CHARS], "ascii", "replace"))
                self._end_attempt(
                    Outcome.PROTOCOL_ERROR, f"malformed serial number {_head(tail)!r}", now, out
                )
                return
            found = head
        if found != found.upper():
            self._buf.clear()
            out.append(AttemptStarted(None, now, "none"))
            self.phase = Phase.KEY
            self._end_attempt(
                Outcome.PROTOCOL_ERROR, f"serial number not upper-case hex {found!r}", now, out
            )
            return
        self._buf.clear()
        uid = found
        admission = self._gate.admit(uid, out)
        if admission is not Admission.ATTEMPT:
            # The finished device syncs again a round later; a new one after a letter gap.
            swap = admission is Admission.SWAP
            gap = self.timing.sync_interval if swap else self.timing.letter_gap
            self._enter_sync(now, now + gap, out)
            return
        self.uid = uid
        self._transcript.clear()
        self._rx_line.clear()
        self._transcript.append(f"serial {uid}")
        self._delivered = False
        self.phase = Phase.KEY
        self.deadline = now + self.timing.csr_timeout
        out.append(AttemptStarted(uid, now, "none"))
        self._gate.show(JigState.PROVISIONING, uid, out)
        out.append(SendBytes(CMD_KEY))

    def _on_key(self, now: float, out: list[Effect]) -> None:
        text = _clean(self._buf)
        begin = text.find(BEGIN_PUBLIC_KEY)
        if begin < 0:
            return
        body: list[str] = [BEGIN_PUBLIC_KEY]
        size = len(BEGIN_PUBLIC_KEY) + 1
        closed = False
        for raw in text[begin + len(BEGIN_PUBLIC_KEY) :].split("\n"):
            line = raw.strip("\r ")
            if line == END_PUBLIC_KEY:
                body.append(line)
                size += len(line) + 1
                closed = True
                break
            if line and _BASE64_BODY.fullmatch(line):
                body.append(line)
                size += len(line) + 1
            # Anything else amid the block is firmware chatter (or a line still arriving).
            if size > MAX_KEY_BYTES:
                break
        if size > MAX_KEY_BYTES:
            self._end_attempt(
                Outcome.CSR_REJECTED,
                f"public key too large (more than {MAX_KEY_BYTES} bytes)",
                now,
                out,
            )
            return
        if not closed:
            return
        assert self.uid is not None
        self._buf.clear()
        self.phase = Phase.ISSUING
        self.deadline = None
        out.append(KeyPresented(self.uid, "\n".join(body) + "\n", "none"))

    def _on_readback(self, now: float, out: list[Effect]) -> None:
        assert self._expected is not None
        text = _clean(self._buf)
        blocks = _CERTIFICATE.findall(text)
        for got, want in zip(blocks, self._expected, strict=False):
            if _block_der(got) != want:
                self._end_attempt(Outcome.DEVICE_ERROR, READBACK_MISMATCH, now, out)
                return
        if len(blocks) < len(self._expected):
            return
        self._buf.clear()
        out.append(SendBytes(CMD_QUIT))
        uid = self.uid
        # Told `q`, the firmware stops listening: it stays silent until it is swapped.
        self._gate.finished(uid, silent=True)
        self._finish(Outcome.PROVISIONED, "readback ok", out)
        self._gate.show(JigState.WAITING_FOR_SWAP, uid, out)
        self._enter_sync(now, now + self.timing.letter_gap, out)

    # --- helpers -----------------------------------------------------------------------------

    def _send_next(self, now: float, out: list[Effect]) -> None:
        data = self._queue.popleft()
        out.append(SendBytes(data))
        self._transcript.append(f"> {_head(data.decode('ascii', 'replace'))}")
        if data is self._dac_pem:
            self._delivered = True
        if self._queue:
            self._next_send = now + self.timing.letter_gap
            return
        # `p` is out: the read-back follows.
        self._next_send = None
        self._buf.clear()
        self.phase = Phase.READBACK
        self.deadline = now + self.timing.result_timeout

    def _end_attempt(self, outcome: Outcome, detail: str, now: float, out: list[Effect]) -> None:
        """End the attempt without `q`: the device keeps listening; hold its serial."""
        self._gate.finished(self.uid)
        self._finish(outcome, detail, out)
        self._enter_sync(now, now + self.timing.letter_gap, out)

    def _finish(self, outcome: Outcome, detail: str, out: list[Effect]) -> None:
        if self._rx_line:
            self._push_line(bytes(self._rx_line))
            self._rx_line.clear()
        out.append(
            AttemptEnded(self.uid, outcome, detail, None, self._delivered, tuple(self._transcript))
        )
        self.uid = None
        self._delivered = False
        self._expected = None
        self._dac_pem = b""
        self._queue.clear()
        self._next_send = None
        self._buf.clear()
        self._transcript.clear()

    def _enter_sync(self, now: float, first_sync: float, out: list[Effect]) -> None:
        self.phase = Phase.SYNCING
        self.deadline = None
        self._buf.clear()
        if self._gate.start_syncing(now, first_sync, out):
            out.append(SendBytes(CMD_READY))

    def _record(self, data: bytes) -> None:
        """Keep what the device said as text lines (bounded) for the attempt transcript."""
        start = 0
        while True:
            nl = data.find(b"\n", start)
            if nl < 0:
                room = TRANSCRIPT_LINE_CHARS - len(self._rx_line)
                if room > 0:
                    self._rx_line += data[start : start + room]
                return
            self._rx_line += data[start:nl]
            self._push_line(bytes(self._rx_line))
            self._rx_line.clear()
            start = nl + 1

    def _push_line(self, raw: bytes) -> None:
        self._transcript.append(
            raw.rstrip(b"\r").decode("ascii", "replace")[:TRANSCRIPT_LINE_CHARS]
        )


def _text(buf: bytes | bytearray) -> str:
    # Firmware logs may carry any byte; replacement keeps them harmless.
    return bytes(buf).decode("ascii", "replace")


def _clean(buf: bytes | bytearray) -> str:
    """The answer without the firmware's complete log lines, nor one still arriving at its end."""
    text = LOG_LINE.sub("", _text(buf))
    return _LOG_TAIL.sub("", text)


def _pem_bytes(pem: str) -> bytes:
    return (pem.strip() + "\n").encode("ascii")


def _pem_der(pem: str) -> bytes:
    match = _CERTIFICATE.search(pem)
    if match is None:
        raise ValueError("no PEM CERTIFICATE block")
    der = _block_der(match.group(1))
    if der is None:
        raise ValueError("PEM body is not base64")
    return der


def _block_der(body: str) -> bytes | None:
    """The DER inside a PEM block's body, or None when it is not base64."""
    compact = "".join(body.split())
    if not _BASE64_BODY.fullmatch(compact):
        return None
    try:
        return base64.b64decode(compact, validate=True)
    except (binascii.Error, ValueError):
        return None


def _head(text: str) -> str:
    return text if len(text) <= 40 else text[:40] + "..."
