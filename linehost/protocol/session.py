"""The jig-protocol seam: what a runner drives, whatever the firmware speaks.

A jig protocol is a sans-IO session: raw bytes and the current time in, effects out. The runner
writes `SendBytes`/`SendLine` data to the port, records `AttemptStarted`/`AttemptEnded`, shows
`StateChanged`, and answers `KeyPresented` with `deliver()` or `reject()` once the provisioner has
decided. Protocol v1 (`protocol/host.py`) is one implementation; a protocol that frames no lines
emits `SendBytes` and presents a bare public key (`key_proof = "none"`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, Literal, Protocol

from linehost.protocol.outcomes import JigState, Outcome
from linehost.records import KeyProof

SYNC_INTERVAL: Final = 1.0
CSR_TIMEOUT: Final = 30.0
RESULT_TIMEOUT: Final = 30.0
#: Unanswered sync rounds after which a jig counts as empty (releases a swap hold).
EMPTY_AFTER_SYNCS: Final = 3
#: Letter protocols: the pause after a command letter (or a PEM) that has no answer.
LETTER_GAP: Final = 0.2

#: `[protocol] attest`: never challenge / challenge devices that offer it / refuse the others.
AttestMode = Literal["off", "when_offered", "require"]


@dataclass(frozen=True, slots=True)
class Timing:
    """The protocol's timeouts in seconds, and its options (`[protocol]` in the station config)."""

    sync_interval: float = SYNC_INTERVAL
    csr_timeout: float = CSR_TIMEOUT
    result_timeout: float = RESULT_TIMEOUT
    empty_after_syncs: int = EMPTY_AFTER_SYNCS
    letter_gap: float = LETTER_GAP
    attest: AttestMode = "off"  # the attestation extension (v1.1); protocols without it ignore it


# --- effects -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SendBytes:
    """Write these bytes to the port as they are."""

    data: bytes


@dataclass(frozen=True, slots=True)
class SendLine:
    """Write this line to the port, LF-terminated (line protocols)."""

    text: str

    @property
    def data(self) -> bytes:
        """The bytes on the wire."""
        return (self.text + "\n").encode("ascii", "replace")


@dataclass(frozen=True, slots=True)
class StateChanged:
    """The jig's visible state changed."""

    state: JigState
    uid: str | None


@dataclass(frozen=True, slots=True)
class AttemptStarted:
    """A device identified itself: an attempt begins."""

    uid: str | None
    at: float
    key_proof: KeyProof = "csr"  # how this protocol's devices show their key


@dataclass(frozen=True, slots=True)
class KeyPresented:
    """The device presented its key; answer with deliver() or reject().

    `pem` is a PKCS#10 request when `key_proof` is "csr", a bare SubjectPublicKeyInfo PEM
    (`PUBLIC KEY`) when it is "none" (the device cannot prove possession).
    """

    uid: str
    pem: str
    key_proof: KeyProof = "csr"


@dataclass(frozen=True, slots=True)
class Attestation:
    """The challenge sent after `finish:000` and the device's answer (None: none came)."""

    nonce: bytes  # the 32 random bytes N
    signature: bytes | None  # DER ECDSA-SHA256 over N || SHA-256(DAC DER as stored)


@dataclass(frozen=True, slots=True)
class AttemptEnded:
    """The attempt is over; the runner records it.

    With `attestation` set and outcome `provisioned`, the device answered the challenge: the
    signature still has to be verified against the DAC recorded before the DAC counts as
    confirmed (a failed check makes it `attestation_failed`).
    """

    uid: str | None
    outcome: Outcome
    detail: str
    device_code: int | None
    delivered: bool  # a DAC reached the port during this attempt
    transcript: tuple[str, ...]
    attestation: Attestation | None = None  # a challenge was sent during this attempt


@dataclass(frozen=True, slots=True)
class DeviceArrived:
    """A new device answered while new devices are held: it was told to stop, no attempt
    began; the runner prepares it (its pre step) and opens the conversation again."""

    uid: str


Send = SendBytes | SendLine
Effect = (
    SendBytes
    | SendLine
    | StateChanged
    | AttemptStarted
    | KeyPresented
    | AttemptEnded
    | DeviceArrived
)


class JigProtocol(Protocol):
    """One jig's conversation, device after device, for as long as its port stays open."""

    @property
    def state(self) -> JigState:
        """The visible jig state."""
        ...

    @property
    def in_attempt(self) -> bool:
        """True between a device identifying itself and the attempt's end."""
        ...

    @property
    def ready_for_device(self) -> bool:
        """Not talking to a device and holding none: a pre step may prepare the next one."""
        ...

    def open(self, now: float) -> list[Effect]:
        """The port was just opened: reset any half-finished device, then start syncing."""
        ...

    def on_bytes(self, data: bytes, now: float) -> list[Effect]:
        """Handle bytes read from the port (any chunking)."""
        ...

    def on_timer(self, now: float) -> list[Effect]:
        """Time passed: sync again or apply a timeout."""
        ...

    def next_wakeup(self) -> float | None:
        """The loop time at which on_timer() must be called next (None: only bytes matter)."""
        ...

    def deliver(
        self,
        dac_pem: str,
        pai_pem: str,
        now: float,
        *,
        cd_b64: str | None = None,
        factory_data: tuple[tuple[str, str], ...] = (),
        root_key_pem: str | None = None,
    ) -> list[Effect]:
        """The assignment is recorded: send the credentials, then wait for the result.

        `root_key_pem` is the PAA's public key (PEM), for protocols that store it."""
        ...

    def reject(self, outcome: Outcome, detail: str, now: float) -> list[Effect]:
        """Abandon the device that presented its key, without delivering."""
        ...

    def abort(self, outcome: Outcome, detail: str, now: float) -> list[Effect]:
        """Abandon the current attempt (shutdown grace over), telling the device to stop."""
        ...

    def close(self, outcome: Outcome, detail: str, now: float) -> list[Effect]:
        """The port is gone: end any attempt; the jig goes offline."""
        ...

    def stop(self, now: float) -> list[Effect]:
        """The host takes no more devices: leave the idle device in a clean state."""
        ...

    def expect_swap(self, uid: str | None) -> None:
        """`uid` finished here earlier: if it answers again, it waits for a swap (no attempt)."""
        ...

    def hold_new_devices(self, hold: bool) -> None:
        """While held, a new device yields DeviceArrived (to be prepared) instead of an attempt."""
        ...
