"""The host side of jig protocol v1 as a state machine: bytes or lines and time in, effects out.

Nothing here does I/O or reads a clock. The jig runner feeds received bytes (`on_bytes`, framed
here into lines for `on_line` / `on_line_too_long`) and the passing of time (`on_timer`),
performs the effects returned, and answers a `KeyPresented` effect (key_proof "csr") with
`deliver()` or `reject()`. `HostSession` implements `protocol.session.JigProtocol`.

With `Timing.attest` on, a device that offers the attestation extension (v1.1) is challenged
after its `finish:000`; the attempt ends with the challenge and the answer attached
(`AttemptEnded.attestation`) for the provisioner to verify against the DAC it recorded.
"""

from __future__ import annotations

import base64
import binascii
import re
import secrets
from collections import deque
from collections.abc import Callable
from enum import Enum, auto
from typing import Final

from linehost.protocol import wire
from linehost.protocol.framing import LineFramer
from linehost.protocol.gate import Admission, DeviceGate, GatedSession
from linehost.protocol.outcomes import FINISH_OK, JigState, Outcome, describe_finish
from linehost.protocol.session import (
    CSR_TIMEOUT,
    EMPTY_AFTER_SYNCS,
    RESULT_TIMEOUT,
    SYNC_INTERVAL,
    AttemptEnded,
    AttemptStarted,
    Attestation,
    Effect,
    KeyPresented,
    SendLine,
    Timing,
)

__all__ = [
    "CSR_TIMEOUT",
    "EMPTY_AFTER_SYNCS",
    "RESULT_TIMEOUT",
    "SYNC_INTERVAL",
    "AttemptEnded",
    "AttemptStarted",
    "Effect",
    "HostSession",
    "KeyPresented",
    "Phase",
    "SendLine",
    "Timing",
]

MAX_CSR_BYTES: Final = 4096
TRANSCRIPT_LINES: Final = 400
TRANSCRIPT_LINE_CHARS: Final = 200
DEFAULT_TIMING: Final = Timing()
#: Bytes of the attestation challenge N (64 hex digits on the wire).
NONCE_BYTES: Final = 32

START: Final = wire.START_PROVISIONING
CSR_BEGIN: Final = wire.BEGIN_CSR
CSR_END: Final = wire.END_CSR
_ABORT: Final = wire.ABORT
_INIT: Final = wire.INIT
_UID: Final = wire.UID_PREFIX
_FINISH: Final = wire.FINISH_PREFIX
_PEM_MARKERS: Final = (wire.PEM_BEGIN, wire.PEM_END)
_START_OFFER: Final = START + " "  # `Start_provisioning <capability words>` (v1.1)
_ATTEST_ANSWER: Final = wire.ATTEST_ANSWER_PREFIX
_PROTOCOL_PREFIXES: Final = (_UID, _FINISH, *_PEM_MARKERS, _START_OFFER, _ATTEST_ANSWER)
_UID_RE: Final = re.compile(re.escape(_UID) + r"([0-9A-Fa-f]{8,64})")
_FINISH_RE: Final = re.compile(re.escape(_FINISH) + r"([0-9A-Fa-f]{3,4})")
_BASE64_RE: Final = re.compile(r"[A-Za-z0-9+/]+={0,2}")


class Phase(Enum):
    """Where the conversation with the current device stands."""

    CLOSED = auto()
    SYNCING = auto()
    IDENTIFYING = auto()
    RECEIVING_CSR = auto()
    ISSUING = auto()
    AWAITING_RESULT = auto()
    AWAITING_ATTESTATION = auto()  # finish:000 came; the challenge is out (v1.1)


class HostSession(GatedSession):
    """One jig's conversation, device after device, for as long as its port stays open."""

    def __init__(
        self,
        timing: Timing = DEFAULT_TIMING,
        *,
        entropy: Callable[[int], bytes] = secrets.token_bytes,
    ) -> None:
        self.timing = timing
        self._entropy = entropy  # a CSPRNG: every challenge must be new and unguessable
        self.phase = Phase.CLOSED
        self.uid: str | None = None
        self.deadline: float | None = None
        self._gate = DeviceGate(timing, turn_away=(SendLine(_ABORT),))
        self._csr_lines: list[str] = []
        self._csr_bytes = 0
        self._in_csr_block = False
        self._delivered = False
        self._transcript: deque[str] = deque(maxlen=TRANSCRIPT_LINES)
        self._framer = LineFramer()
        self._offered = False  # the device's sync answer offered `attest`
        self._nonce: bytes | None = None  # the challenge sent in this attempt
        self._signature: bytes | None = None  # the device's ATTEST answer

    @property
    def in_attempt(self) -> bool:
        """True between a valid UID line and the attempt's end."""
        return self.phase in _ATTEMPT_PHASES

    @property
    def idle(self) -> bool:
        """Syncing with no finished device held: the jig is ready for a new device."""
        return self.phase is Phase.SYNCING and not self._gate.holding

    @property
    def ready_for_device(self) -> bool:
        """Closed, or syncing with no finished device held."""
        return self.phase is Phase.CLOSED or self.idle

    def next_wakeup(self) -> float | None:
        """The loop time at which on_timer() must be called next (None: only lines matter)."""
        if self.phase is Phase.SYNCING:
            return self._gate.next_sync
        return self.deadline

    # --- inputs ----------------------------------------------------------------------------

    def open(self, now: float) -> list[Effect]:
        """The port was just opened: reset any half-finished device, then start syncing."""
        out: list[Effect] = [SendLine(_ABORT)]
        self._framer.reset()
        self._gate.answered()
        self._enter_sync(now, out, send_now=True)
        return out

    def on_bytes(self, data: bytes, now: float) -> list[Effect]:
        """Frame received bytes into lines and handle each."""
        out: list[Effect] = []
        for frame in self._framer.feed(data):
            if isinstance(frame, str):
                out += self.on_line(frame, now)
            else:
                out += self.on_line_too_long(frame.length, now)
        return out

    def on_line(self, line: str, now: float) -> list[Effect]:
        """Handle one received line (CR already stripped)."""
        out: list[Effect] = []
        phase = self.phase
        if phase is Phase.SYNCING:
            if line == START or line.startswith(_START_OFFER):
                # Capability words follow one space; words this host does not know are ignored.
                self._offered = wire.CAPABILITY_ATTEST in line[len(START) :].split()
                self._gate.answered()
                self.phase = Phase.IDENTIFYING
                self.deadline = now + self.timing.csr_timeout
            # Anything else while syncing is boot noise or a reply to an Abort: dropped.
        elif phase is Phase.IDENTIFYING:
            self._on_identifying(line, now, out)
        elif phase is Phase.RECEIVING_CSR:
            self._record(line)
            self._on_csr_line(line, now, out)
        elif phase is Phase.ISSUING:
            self._record(line)
            if _is_protocol_line(line):
                self._violation(
                    f"unexpected {_head(line)!r} while the DAC was being issued", now, out
                )
        elif phase is Phase.AWAITING_RESULT:
            self._record(line)
            self._on_result_line(line, now, out)
        elif phase is Phase.AWAITING_ATTESTATION:
            self._record(line)
            self._on_attestation_line(line, now, out)
        return out

    def on_line_too_long(self, length: int, now: float) -> list[Effect]:
        """A line exceeded the 1024-byte bound; its bytes were discarded."""
        out: list[Effect] = []
        if self.in_attempt:
            self._record(f"<{length} bytes without newline discarded>")
            self._violation(f"line longer than 1024 bytes ({length} bytes)", now, out)
        return out

    def on_timer(self, now: float) -> list[Effect]:
        """Time passed: send the next Init or apply a timeout."""
        out: list[Effect] = []
        if self.phase is Phase.SYNCING:
            if self._gate.sync_due(now, out):
                out.append(SendLine(_INIT))
        elif self.deadline is not None and now >= self.deadline:
            if self.phase is Phase.IDENTIFYING:
                # Start_provisioning without a UID: no attempt exists yet, just start over.
                out.append(SendLine(_ABORT))
                self._enter_sync(now, out, send_now=False)
            elif self.phase is Phase.RECEIVING_CSR:
                if self._in_csr_block:
                    self._end(Outcome.PROTOCOL_ERROR, "CSR PEM block never closed", None, now, out)
                else:
                    self._end(Outcome.TIMEOUT, "csr", None, now, out)
            elif self.phase is Phase.AWAITING_RESULT:
                self._end(Outcome.TIMEOUT, "result", None, now, out)
            elif self.phase is Phase.AWAITING_ATTESTATION:
                self._end(
                    Outcome.ATTESTATION_FAILED, "no answer to Attest (timeout)", None, now, out
                )
        return out

    def deliver(
        self,
        dac_pem: str,
        pai_pem: str,
        now: float,
        *,
        cd_b64: str | None = None,
        factory_data: tuple[tuple[str, str], ...] = (),
        root_key_pem: str | None = None,  # v1 has no line for it
    ) -> list[Effect]:
        """Send DAC, PAI, optional CD and factory data, then END; wait for the result."""
        if self.phase is not Phase.ISSUING:
            return []
        out: list[Effect] = []
        for pem in (dac_pem, pai_pem):
            out.extend(SendLine(text) for text in pem.strip().splitlines())
        if cd_b64 is not None:
            out.append(SendLine(f"{wire.CD_PREFIX}{cd_b64}"))
        out.extend(SendLine(f"{wire.FD_PREFIX}{name}={value}") for name, value in factory_data)
        out.append(SendLine(wire.END))
        self._delivered = True
        self.phase = Phase.AWAITING_RESULT
        self.deadline = now + self.timing.result_timeout
        return out

    def reject(self, outcome: Outcome, detail: str, now: float) -> list[Effect]:
        """Abandon the device without delivering (bad CSR, issuer failure, duplicate key...)."""
        if self.phase is not Phase.ISSUING:
            return []
        out: list[Effect] = []
        self._end(outcome, detail, None, now, out)
        return out

    def close(self, outcome: Outcome, detail: str, now: float) -> list[Effect]:
        """The port is gone or the host stops: end any attempt, the jig goes offline."""
        out: list[Effect] = []
        if self.in_attempt:
            self._finish_attempt(outcome, detail, None, out)
        self.phase = Phase.CLOSED
        self.deadline = None
        self._gate.show(JigState.OFFLINE, None, out)
        return out

    def stop(self, now: float) -> list[Effect]:
        """The host stops: tell an idle device to start clean with the next host."""
        return [SendLine(_ABORT)]

    def abort(self, outcome: Outcome, detail: str, now: float) -> list[Effect]:
        """Abandon the current attempt (shutdown grace over), telling the device to stop."""
        out: list[Effect] = []
        if self.in_attempt:
            self._end(outcome, detail, None, now, out)
        return out

    # --- phases ----------------------------------------------------------------------------

    def _on_identifying(self, line: str, now: float, out: list[Effect]) -> None:
        if line.startswith(_UID):
            match = _UID_RE.fullmatch(line)
            if match is None:
                self.uid = None
                self._transcript.clear()
                self._record(line)
                out.append(AttemptStarted(None, now))
                self.phase = Phase.RECEIVING_CSR
                self._violation(f"malformed UID line {_head(line)!r}", now, out)
                return
            uid = match.group(1).upper()
            if self._gate.admit(uid, out) is not Admission.ATTEMPT:
                # Told to stop: it waits for a swap, or for its pre step.
                self._enter_sync(now, out, send_now=False)
                return
            self.uid = uid
            self._transcript.clear()
            self._record(line)
            self._csr_lines = []
            self._csr_bytes = 0
            self._in_csr_block = False
            self._delivered = False
            self.phase = Phase.RECEIVING_CSR
            out.append(AttemptStarted(uid, now))
            self._gate.show(JigState.PROVISIONING, uid, out)
            if self.timing.attest == "require" and not self._offered:
                # Refused before its CSR is accepted: no DAC for a device that cannot prove.
                self._violation("attestation not offered", now, out)
        elif line.startswith(_FINISH) or line == CSR_BEGIN:
            # A device mid-flow that we never identified: make it start clean.
            out.append(SendLine(_ABORT))
            self._enter_sync(now, out, send_now=False)
        # Other lines (logs, a repeated Start_provisioning) are ignored before the UID.

    def _on_csr_line(self, line: str, now: float, out: list[Effect]) -> None:
        if not self._in_csr_block:
            if line == CSR_BEGIN:
                self._in_csr_block = True
                self._csr_lines = [line]
                self._csr_bytes = len(line) + 1
            elif _is_protocol_line(line):
                self._violation(f"expected a CSR, got {_head(line)!r}", now, out)
            return
        if line == CSR_END:
            self._csr_lines.append(line)
            pem = "\n".join(self._csr_lines) + "\n"
            self._csr_lines = []
            self._in_csr_block = False
            self.phase = Phase.ISSUING
            self.deadline = None
            assert self.uid is not None
            out.append(KeyPresented(self.uid, pem, "csr"))
            return
        if line.startswith(_PEM_MARKERS):
            # Any other line of dashes is not base64: a firmware log line (spec: transcript only).
            self._violation(f"unexpected PEM marker in CSR block {_head(line)!r}", now, out)
            return
        if not _BASE64_RE.fullmatch(line):
            if _is_protocol_line(line):
                self._violation(f"unexpected {_head(line)!r} inside the CSR block", now, out)
            # Otherwise a firmware log line printed amid the block: transcript only.
            return
        self._csr_bytes += len(line) + 1
        if self._csr_bytes > MAX_CSR_BYTES:
            self._end(
                Outcome.CSR_REJECTED,
                f"CSR too large (more than {MAX_CSR_BYTES} bytes)",
                None,
                now,
                out,
            )
            return
        self._csr_lines.append(line)

    def _on_result_line(self, line: str, now: float, out: list[Effect]) -> None:
        if line.startswith(_FINISH):
            match = _FINISH_RE.fullmatch(line)
            if match is None:
                self._violation(f"malformed finish line {_head(line)!r}", now, out)
                return
            code = int(match.group(1), 16)
            if code == FINISH_OK and self._attesting:
                self._challenge(now, out)
            elif code == FINISH_OK:
                self._end(Outcome.PROVISIONED, describe_finish(code), code, now, out, abort=False)
            else:
                self._end(Outcome.DEVICE_ERROR, describe_finish(code), code, now, out, abort=False)
        elif _is_protocol_line(line):
            self._violation(f"unexpected {_head(line)!r} while waiting for finish", now, out)

    def _challenge(self, now: float, out: list[Effect]) -> None:
        nonce = self._entropy(NONCE_BYTES)
        self._nonce = nonce
        self._signature = None
        out.append(SendLine(f"{wire.ATTEST_CHALLENGE_PREFIX}{nonce.hex().upper()}"))
        self.phase = Phase.AWAITING_ATTESTATION
        self.deadline = now + self.timing.result_timeout

    def _on_attestation_line(self, line: str, now: float, out: list[Effect]) -> None:
        failed = Outcome.ATTESTATION_FAILED
        if line.startswith(_ATTEST_ANSWER):
            if self._signature is not None:
                self._end(failed, "more than one ATTEST line", None, now, out)
                return
            try:
                signature = base64.b64decode(line[len(_ATTEST_ANSWER) :], validate=True)
            except (binascii.Error, ValueError):
                signature = b""
            if not signature:
                self._end(failed, f"malformed ATTEST line {_head(line)!r}", None, now, out)
                return
            self._signature = signature
        elif line.startswith(_FINISH):
            match = _FINISH_RE.fullmatch(line)
            if match is None:
                self._end(failed, f"malformed finish line {_head(line)!r}", None, now, out)
                return
            code = int(match.group(1), 16)
            if code != FINISH_OK:
                detail = f"{describe_finish(code)} (answer to Attest)"
                self._end(failed, detail, code, now, out, abort=False)
            elif self._signature is None:
                self._end(
                    failed, "finish:000 without an ATTEST answer", code, now, out, abort=False
                )
            else:
                # Answered: the provisioner verifies it against the DAC it recorded.
                self._end(Outcome.PROVISIONED, describe_finish(code), code, now, out, abort=False)
        elif _is_protocol_line(line):
            self._end(
                failed, f"unexpected {_head(line)!r} while waiting for ATTEST", None, now, out
            )

    # --- helpers ---------------------------------------------------------------------------

    @property
    def _attesting(self) -> bool:
        """Whether this attempt's device is challenged after its finish:000."""
        mode = self.timing.attest
        return mode == "require" or (mode == "when_offered" and self._offered)

    def _violation(self, detail: str, now: float, out: list[Effect]) -> None:
        self._end(Outcome.PROTOCOL_ERROR, detail, None, now, out)

    def _end(
        self,
        outcome: Outcome,
        detail: str,
        device_code: int | None,
        now: float,
        out: list[Effect],
        *,
        abort: bool = True,
    ) -> None:
        if abort:
            out.append(SendLine(_ABORT))
        self._gate.finished(self.uid)
        self._finish_attempt(outcome, detail, device_code, out)
        self._enter_sync(now, out, send_now=True)

    def _finish_attempt(
        self, outcome: Outcome, detail: str, device_code: int | None, out: list[Effect]
    ) -> None:
        attestation = None
        if self._nonce is not None:
            attestation = Attestation(self._nonce, self._signature)
        out.append(
            AttemptEnded(
                self.uid,
                outcome,
                detail,
                device_code,
                self._delivered,
                tuple(self._transcript),
                attestation,
            )
        )
        self.uid = None
        self._nonce = None
        self._signature = None
        self._delivered = False
        self._csr_lines = []
        self._in_csr_block = False
        self._transcript.clear()

    def _enter_sync(self, now: float, out: list[Effect], *, send_now: bool) -> None:
        self.phase = Phase.SYNCING
        self.deadline = None
        first = now if send_now else now + self.timing.sync_interval
        if self._gate.start_syncing(now, first, out):
            out.append(SendLine(_INIT))

    def _record(self, line: str) -> None:
        self._transcript.append(line[:TRANSCRIPT_LINE_CHARS])


_ATTEMPT_PHASES: Final = frozenset(
    {Phase.RECEIVING_CSR, Phase.ISSUING, Phase.AWAITING_RESULT, Phase.AWAITING_ATTESTATION}
)


def _is_protocol_line(line: str) -> bool:
    """Lines that only the protocol may produce; anything else is firmware chatter."""
    return line == START or line.startswith(_PROTOCOL_PREFIXES)


def _head(line: str) -> str:
    return line if len(line) <= 40 else line[:40] + "..."
