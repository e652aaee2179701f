"""The device side of jig protocol v1, sans-IO: host lines in, device lines and events out.

Time is passed in (`now`, any monotonic clock in seconds); nothing here reads a clock or does I/O.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Final

from linehost.protocol.framing import Frame, LineFramer, LineTooLong
from linehost.protocol.wire import (
    ABORT,
    ATTEST_ANSWER_PREFIX,
    ATTEST_CHALLENGE_PREFIX,
    BEGIN_CERTIFICATE,
    CAPABILITY_ATTEST,
    CD_PREFIX,
    END,
    END_CERTIFICATE,
    FD_PREFIX,
    FINISH_PREFIX,
    INIT,
    START_PROVISIONING,
    UID_PREFIX,
)

#: How long a device stays in one flow (from `Start_provisioning`) before giving up on the host.
FLOW_TIMEOUT: Final = 90.0
#: The device's receive buffer for one PEM block; a larger block is answered `finish:002`.
MAX_PEM_BLOCK: Final = 4096
#: The device's buffer for the Certification Declaration bytes.
MAX_CD_BYTES: Final = 2048


FINISH_DATA_NOT_FOUND: Final = 0x001
FINISH_BUFFER_TOO_SMALL: Final = 0x002
FINISH_PARAMETER_ERROR: Final = 0x003
FINISH_INTERRUPTED: Final = 0xFFFF

_BASE64_LINE = re.compile(r"[A-Za-z0-9+/]+={0,2}")
_CHALLENGE = re.compile(re.escape(ATTEST_CHALLENGE_PREFIX) + r"([0-9A-Fa-f]{64})")


def format_finish(code: int, digits: int | None = None) -> str:
    """The result line for `code`: upper-case hex, 3 digits below 0x1000 else 4, or `digits`."""
    if not 0 <= code <= 0xFFFF:
        raise ValueError(f"finish code out of range: {code}")
    if digits is None:
        return f"{FINISH_PREFIX}{code:03X}"
    if digits not in (3, 4) or code >= 16**digits:
        raise ValueError(f"finish code {code:X} does not fit {digits} hex digits")
    return f"{FINISH_PREFIX}{code:0{digits}X}"


def is_base64_line(line: str) -> bool:
    """True when `line` may be part of a PEM body (anything else inside a block is a log line)."""
    return _BASE64_LINE.fullmatch(line) is not None


__all__ = [  # the wire words stay importable from here for the simulator and the tests
    "ABORT",
    "BEGIN_CERTIFICATE",
    "CD_PREFIX",
    "END",
    "END_CERTIFICATE",
    "FD_PREFIX",
    "FINISH_PREFIX",
    "INIT",
    "START_PROVISIONING",
    "UID_PREFIX",
]


class DeviceState(StrEnum):
    """Where the device is in its provisioning flow."""

    IDLE = "idle"  # waiting for `Init`
    AWAITING_DELIVERY = "awaiting_delivery"  # answered Start_provisioning, collecting until END
    AWAITING_RESULT = "awaiting_result"  # got END; the firmware decides the finish code
    # v1.1: finish:000 sent; an `Attest:` challenge may follow (an Init or Abort ends the flow)
    AWAITING_CHALLENGE = "awaiting_challenge"
    ATTESTING = "attesting"  # got the challenge; the firmware signs or answers a finish code


class FlowEnd(StrEnum):
    """Why a flow ended."""

    FINISHED = "finished"  # the device sent `finish:<code>`
    ABORTED = "aborted"  # the host sent `Abort`
    TIMED_OUT = "timed_out"  # the device's own flow timeout


@dataclass(frozen=True, slots=True)
class Delivery:
    """Everything the host delivered in one flow, structurally complete."""

    dac_pem: str  # one PEM CERTIFICATE block, LF line ends, trailing LF
    pai_pem: str
    cd: bytes | None
    factory_data: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Send:
    """A line the device writes (without its terminator)."""

    line: str


@dataclass(frozen=True, slots=True)
class DeliveryComplete:
    """The host sent `END` after a well-formed delivery: check it and call `finish()`."""

    delivery: Delivery


@dataclass(frozen=True, slots=True)
class ChallengeReceived:
    """The host sent `Attest:<N>`: sign N || SHA-256(stored DAC) and call `answer_challenge()`
    (or `finish()` with an error code)."""

    nonce: bytes


@dataclass(frozen=True, slots=True)
class FlowEnded:
    """The flow is over and the device waits for `Init` again; `code` is the finish code sent."""

    reason: FlowEnd
    code: int | None


DeviceEvent = Send | DeliveryComplete | ChallengeReceived | FlowEnded


class DeviceSession:
    """One device's side of the conversation; reusable across flows (a device that stays)."""

    def __init__(
        self,
        uid: str,
        csr_pem: str,
        *,
        flow_timeout: float = FLOW_TIMEOUT,
        answer_abort: bool = False,
        capabilities: tuple[str, ...] = (),
    ) -> None:
        self.uid = uid
        self.capabilities = capabilities  # offered in the sync answer, e.g. ("attest",)
        self.csr_lines: tuple[str, ...] = tuple(ln for ln in csr_pem.splitlines() if ln)
        self.flow_timeout = flow_timeout
        self.answer_abort = answer_abort
        self._framer = LineFramer()
        self._state = DeviceState.IDLE
        self._deadline: float | None = None
        self._flows = 0
        self._block: list[str] | None = None  # the open PEM block's body lines
        self._block_size = 0
        self._blocks: list[str] = []  # closed CERTIFICATE blocks, as PEM
        self._cd: bytes | None = None
        self._factory: dict[str, str] = {}
        self._overflow = False  # answer 002 at END
        self._malformed = False  # answer 003 at END

    @property
    def state(self) -> DeviceState:
        """The current state."""
        return self._state

    @property
    def deadline(self) -> float | None:
        """When the current flow times out (`poll` at or after it), or None when idle."""
        return self._deadline

    @property
    def flows(self) -> int:
        """How many times this device answered `Start_provisioning`."""
        return self._flows

    def receive_data(self, data: bytes, now: float) -> list[DeviceEvent]:
        """Consume raw bytes from the host; return the events of every line they complete."""
        events: list[DeviceEvent] = []
        for frame in self._framer.feed(data):
            events += self.receive_line(frame, now)
        return events

    def receive_line(self, line: Frame, now: float) -> list[DeviceEvent]:
        """Consume one host line (CR/LF already stripped); return what the device does."""
        events = self.poll(now)
        if isinstance(line, LineTooLong):
            if self._state is DeviceState.AWAITING_DELIVERY:
                self._overflow = True
            return events
        text = line.strip()
        if text == ABORT:
            return events + self._abort()
        if self._state is DeviceState.IDLE:
            if text == INIT:
                events += self._start(now)
            return events
        if self._state is DeviceState.AWAITING_DELIVERY:
            events += self._collect(text)
        elif self._state is DeviceState.AWAITING_CHALLENGE:
            match = _CHALLENGE.fullmatch(text)
            if match is not None:
                self._state = DeviceState.ATTESTING
                events.append(ChallengeReceived(bytes.fromhex(match.group(1))))
            elif text == INIT:
                # The host moved on without a challenge (attestation off): the flow is over.
                events += self._end(FlowEnd.FINISHED, None, sent=0)
        return events

    def finish(self, code: int, now: float, *, digits: int | None = None) -> list[DeviceEvent]:
        """Answer the delivery with `finish:<code>`; [] when no flow awaits a result any more."""
        events = self.poll(now)
        if self._state is DeviceState.ATTESTING:
            return events + self._end(FlowEnd.FINISHED, code, digits)
        if self._state is not DeviceState.AWAITING_RESULT:
            return events
        if code == 0 and CAPABILITY_ATTEST in self.capabilities:
            # Stored: wait for a challenge before the flow ends.
            self._state = DeviceState.AWAITING_CHALLENGE
            return [*events, Send(format_finish(code, digits))]
        return events + self._end(FlowEnd.FINISHED, code, digits)

    def answer_challenge(self, signature: bytes, now: float) -> list[DeviceEvent]:
        """Answer the challenge: `ATTEST:<base64 signature>`, then `finish:000`."""
        events = self.poll(now)
        if self._state is not DeviceState.ATTESTING:
            return events
        answer = Send(ATTEST_ANSWER_PREFIX + base64.b64encode(signature).decode("ascii"))
        return [*events, answer, *self._end(FlowEnd.FINISHED, 0)]

    def poll(self, now: float) -> list[DeviceEvent]:
        """Apply the flow timeout as of `now`."""
        if self._deadline is not None and now >= self._deadline:
            if self._stored:
                return self._end(FlowEnd.FINISHED, None, sent=0)
            return self._end(FlowEnd.TIMED_OUT, None)
        return []

    def reset(self) -> None:
        """Back to idle with no output, forgetting any partial line (power cycle)."""
        self._framer.reset()
        self._state = DeviceState.IDLE
        self._deadline = None
        self._reset_delivery()

    def _start(self, now: float) -> list[DeviceEvent]:
        self._state = DeviceState.AWAITING_DELIVERY
        self._deadline = now + self.flow_timeout
        self._flows += 1
        self._reset_delivery()
        start = " ".join((START_PROVISIONING, *self.capabilities))
        out: list[DeviceEvent] = [Send(start), Send(UID_PREFIX + self.uid)]
        out += [Send(ln) for ln in self.csr_lines]
        return out

    def _collect(self, text: str) -> list[DeviceEvent]:
        if self._block is not None:
            if text == END_CERTIFICATE:
                self._close_block()
            elif text == BEGIN_CERTIFICATE:
                self._malformed = True  # the previous block never closed
                self._block = []
                self._block_size = 0
            elif text == END:
                self._malformed = True
                return self._complete()
            elif is_base64_line(text):
                self._block_size += len(text) + 1
                if self._block_size > MAX_PEM_BLOCK:
                    self._overflow = True
                else:
                    self._block.append(text)
            return []
        if text == BEGIN_CERTIFICATE:
            if len(self._blocks) >= 2:
                self._malformed = True
            self._block = []
            self._block_size = 0
        elif text.startswith(CD_PREFIX):
            self._take_cd(text[len(CD_PREFIX) :])
        elif text.startswith(FD_PREFIX):
            name, sep, value = text[len(FD_PREFIX) :].partition("=")
            if sep and name:
                self._factory[name] = value
        elif text == END:
            return self._complete()
        return []

    def _close_block(self) -> None:
        assert self._block is not None
        body = "\n".join(self._block)
        self._blocks.append(f"{BEGIN_CERTIFICATE}\n{body}\n{END_CERTIFICATE}\n")
        self._block = None
        self._block_size = 0

    def _take_cd(self, value: str) -> None:
        if len(self._blocks) < 2:
            self._malformed = True  # the CD comes after the PAI
        try:
            cd = base64.b64decode(value.strip(), validate=True)
        except (binascii.Error, ValueError):
            self._malformed = True
            return
        if len(cd) > MAX_CD_BYTES:
            self._overflow = True
            return
        self._cd = cd

    def _complete(self) -> list[DeviceEvent]:
        if self._overflow:
            return self._end(FlowEnd.FINISHED, FINISH_BUFFER_TOO_SMALL)
        if self._malformed:
            return self._end(FlowEnd.FINISHED, FINISH_PARAMETER_ERROR)
        if len(self._blocks) < 2:
            return self._end(FlowEnd.FINISHED, FINISH_DATA_NOT_FOUND)
        delivery = Delivery(self._blocks[0], self._blocks[1], self._cd, dict(self._factory))
        self._state = DeviceState.AWAITING_RESULT
        return [DeliveryComplete(delivery)]

    @property
    def _stored(self) -> bool:
        """finish:000 went out in this flow (only an attesting device is still in it)."""
        return self._state in (DeviceState.AWAITING_CHALLENGE, DeviceState.ATTESTING)

    def _abort(self) -> list[DeviceEvent]:
        if self._state is DeviceState.IDLE:
            return []
        if self._stored:
            return self._end(FlowEnd.FINISHED, None, sent=0)  # it keeps what it stored
        if self.answer_abort:
            return self._end(FlowEnd.ABORTED, FINISH_INTERRUPTED)
        return self._end(FlowEnd.ABORTED, None)

    def _end(
        self,
        reason: FlowEnd,
        code: int | None,
        digits: int | None = None,
        *,
        sent: int | None = None,
    ) -> list[DeviceEvent]:
        """End the flow, sending `finish:<code>` unless None; `sent`: the code sent earlier."""
        self._state = DeviceState.IDLE
        self._deadline = None
        self._reset_delivery()
        if code is None:
            return [FlowEnded(reason, sent)]
        return [Send(format_finish(code, digits)), FlowEnded(reason, code)]

    def _reset_delivery(self) -> None:
        self._block = None
        self._block_size = 0
        self._blocks = []
        self._cd = None
        self._factory = {}
        self._overflow = False
        self._malformed = False
