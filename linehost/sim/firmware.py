"""A simulated device running provisioning firmware: identity, delivery check, personality quirks.

`SimulatedDevice` is sans-IO like the session it wraps: bytes and time in, `Action`s out; the pty
harness performs them.
"""

from __future__ import annotations

import hashlib
import random
from collections import deque
from dataclasses import dataclass, field
from typing import Final

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from linehost.pki.attestation import sign_attestation
from linehost.protocol.device import (
    FLOW_TIMEOUT,
    ChallengeReceived,
    Delivery,
    DeliveryComplete,
    DeviceEvent,
    DeviceSession,
    DeviceState,
    FlowEnd,
    FlowEnded,
    Send,
)
from linehost.protocol.framing import LineFramer
from linehost.protocol.wire import BEGIN_CSR, CAPABILITY_ATTEST, END_CSR, INIT, START_PROVISIONING
from linehost.sim import personalities as _knobs
from linehost.sim.checks import (
    FINISH_OK,
    FINISH_PARAMETER_ERROR,
    CheckResult,
    check_delivery,
    check_factory_data,
)
from linehost.sim.identity import DeviceIdentity
from linehost.sim.personalities import Personality

_LOG_TEMPLATES: Final = (
    "I ({ms}) app: heap free {n}",
    "W ({ms}) wifi: sta disconnected, reason {r}",
    "I ({ms}) chip[DL]: BLE advertising stopped",
    "D ({ms}) prov: secure element ready, slot {r}",
    "I ({ms}) nvs: {n} bytes free in partition factory",
    "[{ms:08d}] MATTER: provisioning task alive",
)


@dataclass(frozen=True, slots=True)
class Write:
    """Bytes for the port; `byte_delay` > 0 writes them one at a time."""

    data: bytes
    byte_delay: float = 0.0
    pause: float = 0.0  # seconds to wait before writing (a slow firmware between chunks)


@dataclass(frozen=True, slots=True)
class Unplug:
    """After `after` seconds the port vanishes; it returns `down` seconds later, empty."""

    after: float
    down: float


@dataclass(frozen=True, slots=True)
class Leave:
    """The operator takes the device out of the jig."""


@dataclass(frozen=True, slots=True)
class Reseat:
    """The operator takes the device out and puts the same one back `down` seconds later."""

    down: float


Action = Write | Unplug | Leave | Reseat


@dataclass(slots=True)
class DeviceLog:
    """What happened to one device, for the record (times are the caller's `now` clock)."""

    finish_codes: list[int] = field(default_factory=list)
    stored: CheckResult | None = None
    rejected: CheckResult | None = None
    aborted_flows: int = 0
    reseats: int = 0
    first_sync_at: float | None = None
    finished_at: float | None = None
    ended: str | None = None  # left | unplugged | cancelled (set by whoever removes the device)
    factory_data: dict[str, str] | None = None  # the `FD:` fields stored with the DAC
    attest_nonce: str | None = None  # lower-case hex of the last challenge received (v1.1)
    stored_cd_sha256: str | None = None  # SHA-256 of the `CD:` stored with the DAC (if any)


class SimulatedDevice:
    """One device in a jig: the protocol session plus its personality's quirks."""

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
        self.uid_sent = identity.uid.lower() if personality.uid_lowercase else identity.uid
        self.session = DeviceSession(
            self.uid_sent,
            identity.csr_pem,
            flow_timeout=flow_timeout,
            answer_abort=personality.answer_abort,
            capabilities=(CAPABILITY_ATTEST,) if personality.attest else (),
        )
        self._stored_der: bytes | None = None  # the DAC as stored, for an attestation
        self._rng = rng if rng is not None else random.Random()
        self._framer = LineFramer()
        self._eol = personality.line_ending
        self._inits_ignored = 0
        self._garbage_pending = personality.garbage
        self._finished = False
        self._extra_rounds = 0
        self._gone = False  # left, unplugged or deaf: ignores everything
        self._silent_left = 1 if personality.reseat_seconds > 0 else 0
        self._reseat_pending = False
        self._out = False  # taken out for a reseat: ignores everything until put back

    @property
    def gone(self) -> bool:
        """True once the device no longer reacts (it left, or its port is about to vanish)."""
        return self._gone

    @property
    def out(self) -> bool:
        """True while the operator holds the device outside the jig (a reseat)."""
        return self._out

    @property
    def deadline(self) -> float | None:
        """When `poll` has something to do."""
        return None if self._gone or self._out else self.session.deadline

    def put_back(self, now: float) -> list[Action]:
        """The operator puts the same device back after a reseat: it boots afresh."""
        if not self._out:
            return []
        self._out = False
        self.session.reset()
        self._framer.reset()
        self._inits_ignored = 0
        return self.arrive(now)

    def arrive(self, now: float) -> list[Action]:
        """The device is put in the jig and boots."""
        if not self.personality.boot_banner:
            return []
        return [self._write(self._render(list(self.personality.boot_banner), now))]

    def receive(self, data: bytes, now: float) -> list[Action]:
        """Bytes from the host."""
        if self._gone or self._out:
            return []
        out: list[Action] = []
        lines: list[str] = []
        for frame in self._framer.feed(data):
            idle = self.session.state is DeviceState.IDLE
            if idle and isinstance(frame, str) and frame.strip() == INIT:
                if self._inits_ignored < self.personality.ignore_inits:
                    self._inits_ignored += 1
                    continue
                if self._garbage_pending:
                    self._garbage_pending = False
                    out += self._flush(lines, now)
                    lines = []
                    out.append(Write(self._garbage()))
            if self.personality.noise and isinstance(frame, str) and self._chance():
                lines.append(self._log_line(now))
            events = self.session.receive_line(frame, now)
            lines, more = self._handle(events, lines, now)
            out += more
            if self._gone or self._out:
                break
        return out + self._flush(lines, now)

    def poll(self, now: float) -> list[Action]:
        """Apply the device's flow timeout as of `now`."""
        if self._gone or self._out:
            return []
        lines, out = self._handle(self.session.poll(now), [], now)
        return out + self._flush(lines, now)

    def _handle(
        self, events: list[DeviceEvent], lines: list[str], now: float
    ) -> tuple[list[str], list[Action]]:
        """Turn session events into pending lines and actions (lines are flushed before actions)."""
        out: list[Action] = []
        queue = deque(events)
        started = False
        while queue:
            event = queue.popleft()
            if isinstance(event, Send):
                if event.line == END_CSR and self.personality.csr_unclosed:
                    continue  # the block never closes
                if event.line.partition(" ")[0] == START_PROVISIONING:  # offer words follow
                    started = True
                    if self.log.first_sync_at is None:
                        self.log.first_sync_at = now
                lines.append(event.line)
            elif isinstance(event, DeliveryComplete):
                queue.extend(self._on_delivery(event.delivery, now))
            elif isinstance(event, ChallengeReceived):
                queue.extend(self._on_challenge(event.nonce, now))
            elif isinstance(event, FlowEnded):
                if self._reseat_pending and event.reason is not FlowEnd.FINISHED:
                    self._reseat_pending = False
                    self.log.aborted_flows += 1
                    self.log.reseats += 1
                    out += self._flush(lines, now, started)
                    self._out = True
                    out.append(Reseat(self.personality.reseat_seconds))
                    return [], out
                leave = self._on_flow_ended(event, now)
                if leave:
                    out += self._flush(lines, now, started)
                    lines = []
                    self._gone = True
                    out.append(Leave())
                    return [], out
        if started and self.personality.unplug_after_csr is not None:
            out += self._flush(lines, now, started)
            self._gone = True
            out.append(Unplug(self.personality.unplug_after_csr, self.personality.unplug_seconds))
            return [], out
        if started:
            out += self._flush(lines, now, started)
            lines = []
        return lines, out

    def _on_delivery(self, delivery: Delivery, now: float) -> list[DeviceEvent]:
        if self._silent_left > 0:
            self._silent_left -= 1
            self._reseat_pending = True
            return []
        if not self.personality.answer_finish:
            return []
        if self.personality.finish_junk is not None:
            return [Send(self.personality.finish_junk)]
        forced = self.personality.finish_code
        digits = self.personality.finish_digits
        if forced is not None:
            return self.session.finish(forced, now, digits=digits)
        result = check_delivery(self.identity.public_key_der, delivery, self.paa)
        if result.code == FINISH_OK:
            problem = check_factory_data(delivery.factory_data)
            if problem is not None:
                result = CheckResult(FINISH_PARAMETER_ERROR, problem)
        if result.code == FINISH_OK:
            self.log.stored = result
            self.log.factory_data = dict(delivery.factory_data)
            self._stored_der = x509.load_pem_x509_certificate(
                delivery.dac_pem.encode("ascii")
            ).public_bytes(serialization.Encoding.DER)
            cd = delivery.cd
            self.log.stored_cd_sha256 = hashlib.sha256(cd).hexdigest() if cd is not None else None
        else:
            self.log.rejected = result
        return self.session.finish(result.code, now, digits=digits)

    def _on_challenge(self, nonce: bytes, now: float) -> list[DeviceEvent]:
        """Read the DAC back and sign N || SHA-256(DAC) with the DAC key (or fail as told)."""
        self.log.attest_nonce = nonce.hex()
        answer = self.personality.attest_answer
        stored = self._stored_der
        if answer == "silent":
            return []
        if answer == "error" or stored is None:
            return self.session.finish(self.personality.attest_error_code, now)
        key = self.identity.key
        if answer == "wrong_key":
            key = ec.generate_private_key(ec.SECP256R1())
        elif answer == "wrong_dac":
            corrupted = bytearray(stored)
            corrupted[len(corrupted) // 2] ^= 0x01  # a bit flipped in flash
            stored = bytes(corrupted)
        return self.session.answer_challenge(sign_attestation(key, nonce, stored), now)

    def _on_flow_ended(self, event: FlowEnded, now: float) -> bool:
        """Book the end of a flow; True when the operator now takes the device out."""
        if self._finished and event.reason is not FlowEnd.FINISHED:
            # A round in which the host showed the swap (Abort); a re-delivery is no such sign.
            self._extra_rounds += 1
        if event.reason is FlowEnd.FINISHED and event.code is not None:
            self.log.finish_codes.append(event.code)
            self.log.finished_at = now
            self._finished = True
        elif not self._finished:
            self.log.aborted_flows += 1
        if self._finished:
            return self._extra_rounds >= self.personality.stay_rounds
        return self.log.aborted_flows >= self.personality.max_aborted_flows

    def _flush(self, lines: list[str], now: float, csr_burst: bool = False) -> list[Action]:
        if not lines:
            return []
        return [self._write(self._render(lines, now, csr_burst))]

    def _render(self, lines: list[str], now: float, csr_burst: bool = False) -> bytes:
        if self.personality.noise:
            lines = self._add_noise(lines, now, csr_burst)
        eol = self._eol
        return eol.join(ln.encode("ascii", "replace") for ln in lines) + eol

    def _add_noise(self, lines: list[str], now: float, csr_burst: bool) -> list[str]:
        noisy: list[str] = []
        for ln in lines:
            if self._chance():
                noisy.append(self._log_line(now))
            noisy.append(ln)
        if csr_burst:
            # Guarantee at least one log line strictly inside the CSR block.
            begin = noisy.index(BEGIN_CSR) if BEGIN_CSR in noisy else -1
            end = noisy.index(END_CSR) if END_CSR in noisy else -1
            if 0 <= begin < end:
                noisy.insert(self._rng.randint(begin + 1, end), self._log_line(now))
        return noisy

    def _write(self, data: bytes) -> Write:
        return Write(data, self.personality.byte_delay)

    def _chance(self) -> bool:
        return self._rng.random() < self.personality.noise

    def _log_line(self, now: float) -> str:
        template = self._rng.choice(_LOG_TEMPLATES)
        return template.format(
            ms=int(now * 1000) % 100_000_000,
            n=self._rng.randrange(20_000, 200_000),
            r=self._rng.randrange(1, 256),
        )

    def _garbage(self) -> bytes:
        rng = self._rng
        size = self.personality.garbage_random_bytes or _knobs.GARBAGE_RANDOM_BYTES
        junk = bytearray(rng.randbytes(size))
        for _ in range(16):
            junk[rng.randrange(len(junk))] = 0
        line_bytes = self.personality.garbage_line_bytes or _knobs.GARBAGE_LINE_BYTES
        long_line = rng.randbytes(line_bytes // 2).hex().encode()[:line_bytes]
        return (
            bytes(junk)
            + b"\n\x00\x00\x00\n"
            + b"\xff\xfe\xc3\x28 invalid utf-8 \x80\x81\xe2\x82\n"
            + long_line
            + b"\n"
        )


__all__ = [
    "Action",
    "DeviceLog",
    "Leave",
    "Reseat",
    "SimulatedDevice",
    "Unplug",
    "Write",
    "check_delivery",
]
