"""Provisioner: one line's decision for a device that presented its key — deliver or refuse.

It owns the issuer, the store, the onboarding draws, the work-order gate, the Certification
Declaration and the retry policy (collisions draw again; an unreachable database is waited for).
The runner only asks `provision()` and `record()`; nothing here touches a port.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Final, Protocol, TypeVar

from linehost.backoff import Backoff
from linehost.errors import (
    Collision,
    CsrRejected,
    DacCollision,
    DatabaseUnavailable,
    IssuerError,
    IssuerUnavailable,
    OnboardingError,
    QuotaExhausted,
    StoreError,
)
from linehost.line.workorder import NO_WORK_ORDER, NoWorkOrder, WorkOrderGate
from linehost.observers import DB_ASSIGN, DB_END_ATTEMPT, NO_OBSERVER, AttemptObserver
from linehost.onboarding.sealing import SealError
from linehost.pki.attestation import verify_attestation
from linehost.pki.csr import parse_csr, parse_public_key
from linehost.pki.issuer import Issuer
from linehost.protocol.outcomes import AssignmentStatus, JigState, Outcome
from linehost.protocol.session import Attestation, AttestMode
from linehost.records import (
    AssignRequest,
    AssignResult,
    AttemptEnd,
    AttemptStart,
    CsrInfo,
    IssuedDac,
    KeyProof,
    OnboardingRecord,
    OnboardingRequest,
    utcnow,
)

DB_RETRY_MIN: Final = 0.5
DB_RETRY_MAX: Final = 5.0
ISSUER_RETRY_MIN: Final = 1.0
ISSUER_RETRY_MAX: Final = 30.0
ISSUE_RETRIES: Final = 3

T = TypeVar("T")


class AttemptStore(Protocol):
    """What a provisioner needs from the store; every call returns only once committed."""

    async def assign(self, req: AssignRequest) -> AssignResult: ...

    async def end_attempt(self, start: AttemptStart, end: AttemptEnd) -> None: ...


class Commissioning(Protocol):
    """What a provisioner needs of onboarding (`onboarding.service.Onboarding`)."""

    async def draw(self, uid: str, vid: str, pid: str) -> OnboardingRequest | None:
        """Fresh commissioning data for one device (None: the line has none)."""
        ...

    def factory_data(self, record: OnboardingRecord) -> tuple[tuple[str, str], ...]:
        """The factory-data fields a device receives with its DAC."""
        ...

    def print_label_soon(self, record: OnboardingRecord, log: Any = None) -> None:
        """Print the device's label in the background."""
        ...


class NoOnboarding:
    """A line without `[onboarding]`: nothing is drawn, so no record comes back to deliver."""

    async def draw(self, uid: str, vid: str, pid: str) -> None:
        """No commissioning data."""
        return None

    def factory_data(self, record: OnboardingRecord) -> tuple[tuple[str, str], ...]:
        """No factory data."""
        return ()

    def print_label_soon(self, record: OnboardingRecord, log: Any = None) -> None:
        """No label."""


NO_ONBOARDING: Final = NoOnboarding()


def database_backoff() -> Backoff:
    """The pacing of retries while the database is away."""
    return Backoff(low=DB_RETRY_MIN, high=DB_RETRY_MAX)


def issuer_backoff() -> Backoff:
    """The pacing of retries while the issuer (a signing gateway) is away; jittered, so that
    the jigs of a line do not all ask again at the same moment."""
    return Backoff(low=ISSUER_RETRY_MIN, high=ISSUER_RETRY_MAX, jitter=0.2)


@dataclass(frozen=True, slots=True)
class Deliver:
    """The assignment is committed: send these credentials to the device."""

    dac_pem: str
    pai_pem: str
    cd_b64: str | None
    factory_data: tuple[tuple[str, str], ...]
    root_key_pem: str | None = None  # the PAA's public key, for protocols that store it


@dataclass(frozen=True, slots=True)
class Reject:
    """Nothing may be sent: abandon the device with this outcome."""

    outcome: Outcome
    detail: str


def _ignore_wait(waiting: JigState | None) -> None:
    """No jig to tell (tests, tools)."""


@dataclass(slots=True)
class Attempt:
    """One device's attempt as the provisioner sees it."""

    start: AttemptStart
    log: Any  # a structlog logger bound to the jig
    #: Told the waiting state (`waiting_for_database` / `waiting_for_issuer`) when the attempt
    #: has to wait for one, and None once it is back.
    on_wait: Callable[[JigState | None], None] = _ignore_wait
    observer: AttemptObserver = NO_OBSERVER  # told the issuer's and the database's latency
    assignment_id: int | None = None
    dac_serial: str | None = None
    dac_pem: str | None = None  # the DAC recorded and delivered (an attestation proves it)
    recorded: bool = False  # the store already ended it (a refused assign)
    onboarding: OnboardingRecord | None = None  # the device's commissioning data, delivered


class Provisioner:
    """Issues, records and refuses for every jig of one line."""

    def __init__(
        self,
        issuer: Issuer,
        store: AttemptStore,
        *,
        allow_reprovision: bool = False,
        onboarding: Commissioning = NO_ONBOARDING,
        cd_b64: str | None = None,
        cd_sha256: str | None = None,
        gate: WorkOrderGate | NoWorkOrder = NO_WORK_ORDER,
        clock: Callable[[], float] = time.monotonic,
        root_key_pem: str | None = None,
        attest: AttestMode = "off",
    ) -> None:
        self.issuer = issuer
        self.store = store
        self.gate = gate
        self._allow_reprovision = allow_reprovision
        self._onboarding = onboarding
        self._cd_b64 = cd_b64  # the Certification Declaration line, sent with every DAC
        self._cd_sha256 = cd_sha256  # ...and its fingerprint, recorded with every new DAC
        self._clock = clock
        self._root_key_pem = root_key_pem  # the PAA public key (`[pki] paa_cert`), when set
        self._attest = attest

    @property
    def work_order(self) -> str | None:
        """The work order every attempt of this line belongs to."""
        return self.gate.id

    def on_work_order(self, listener: Callable[[], None]) -> None:
        """Call `listener` whenever the work order becomes complete or open again."""
        self.gate.subscribe(listener)

    @property
    def work_order_complete(self) -> bool:
        """True while the work order has no slot left (nothing will be provisioned)."""
        return self.gate.complete

    async def provision(
        self, attempt: Attempt, key_pem: str, key_proof: KeyProof = "csr"
    ) -> Deliver | Reject:
        """Check the key (a CSR, or a bare public key when `key_proof` is "none"), issue,
        record the assignment durably; only then say Deliver."""
        uid = attempt.start.uid
        assert uid is not None
        log = attempt.log.bind(uid=uid, attempt_id=attempt.start.attempt_id)
        now = self._clock
        try:
            csr = parse_csr(key_pem) if key_proof == "csr" else parse_public_key(key_pem)
        except CsrRejected as exc:
            log.warning("csr_rejected", detail=str(exc))
            return Reject(Outcome.CSR_REJECTED, str(exc))
        log.debug("csr_received", key=csr.public_key_sha256[:16])
        gate = self.gate
        if gate.complete:
            log.warning("work_order_complete", work_order=gate.id)
            return Reject(Outcome.ISSUER_ERROR, gate.refusal)
        observer = attempt.observer
        for _ in range(ISSUE_RETRIES):
            try:
                issue_started = now()
                candidate = await self._issue(attempt, uid, csr)
                observer.issuer_answered(attempt.start, now() - issue_started)
            except QuotaExhausted as exc:
                log.error("issuer_quota_exhausted", scope=exc.scope, name=exc.name)
                return Reject(Outcome.ISSUER_ERROR, f"quota exhausted: {exc}")
            except IssuerError as exc:
                log.error("issuer_failed", detail=str(exc))
                return Reject(Outcome.ISSUER_ERROR, str(exc))
            wanted = await self._onboarding.draw(uid, candidate.vid, candidate.pid)
            request = AssignRequest(
                attempt=attempt.start,
                public_key_sha256=csr.public_key_sha256,
                candidate=candidate,
                allow_reprovision=self._allow_reprovision,
                onboarding=wanted,
                key_proof=csr.key_proof,
                cd_sha256=self._cd_sha256,
            )
            try:
                commit_started = now()
                assign = functools.partial(self.store.assign, request)
                result = await self._with_database(attempt, assign)
                observer.database_committed(attempt.start, DB_ASSIGN, now() - commit_started)
            except OnboardingError as exc:  # a rule the config cannot meet: retrying won't help
                log.error("onboarding_failed", detail=str(exc))
                return Reject(Outcome.ISSUER_ERROR, str(exc))
            except Collision as exc:  # a DAC serial or onboarding value is taken: draw again
                event = "dac_collision" if isinstance(exc, DacCollision) else "onboarding_collision"
                log.warning(event, detail=str(exc))
                continue
            except StoreError as exc:
                log.error("assign_failed", detail=str(exc))
                return Reject(Outcome.ISSUER_ERROR, f"database: {exc}")
            break
        else:
            return Reject(Outcome.ISSUER_ERROR, "repeated DAC collisions")
        if result.kind == "rejected" or result.kind == "quota_full":
            attempt.recorded = True
            assert result.outcome is not None
            if result.kind == "quota_full":
                gate.set_complete(True)
            log.warning("assignment_rejected", outcome=result.outcome.value, detail=result.detail)
            return Reject(result.outcome, result.detail)
        assert result.dac_pem is not None
        attempt.assignment_id = result.assignment_id
        attempt.dac_serial = result.dac_serial
        attempt.dac_pem = result.dac_pem
        log.info(
            "dac_issued" if result.kind == "issued" else "dac_redelivered",
            dac_serial=result.dac_serial,
        )
        factory_data: tuple[tuple[str, str], ...] = ()
        if result.onboarding is not None:
            attempt.onboarding = result.onboarding
            try:
                factory_data = self._onboarding.factory_data(result.onboarding)
            except SealError as exc:
                log.error("onboarding_failed", detail=str(exc))
                return Reject(Outcome.ISSUER_ERROR, str(exc))
            log.info("onboarding_recorded", serial_num=result.onboarding.serial_num)
        # The assignment is committed: only now may the DAC reach the port.
        return Deliver(
            result.dac_pem, self.issuer.pai_pem, self._cd_b64, factory_data, self._root_key_pem
        )

    def attestation_verdict(
        self, attempt: Attempt, outcome: Outcome, detail: str, attestation: Attestation | None
    ) -> tuple[Outcome, str]:
        """The outcome of an attempt once its attestation is checked against the DAC recorded.

        Only a `provisioned` end is judged. A device that answered the challenge stays
        `provisioned` when its signature verifies; any other answer, and with `attest =
        "require"` no attestation at all, makes it `attestation_failed`.
        """
        if outcome is not Outcome.PROVISIONED:
            return outcome, detail
        problem: str | None
        if attestation is None:
            if self._attest != "require":
                return outcome, detail
            problem = "no attestation (attest = require)"
        elif attestation.signature is None:
            problem = "no ATTEST answer"
        elif attempt.dac_pem is None:
            problem = "no DAC recorded for this attempt"
        else:
            problem = verify_attestation(attempt.dac_pem, attestation.nonce, attestation.signature)
        log = attempt.log.bind(uid=attempt.start.uid, attempt_id=attempt.start.attempt_id)
        if problem is not None:
            log.warning("attestation_failed", detail=problem, dac_serial=attempt.dac_serial)
            return Outcome.ATTESTATION_FAILED, problem
        log.debug("attestation_verified", dac_serial=attempt.dac_serial)
        return outcome, f"{detail}; attestation verified"

    async def record(
        self,
        attempt: Attempt,
        outcome: Outcome,
        detail: str,
        device_code: int | None,
        transcript: str,
        *,
        provisioned: bool,
        attestation: Attestation | None = None,
    ) -> AttemptEnd:
        """Record how the attempt ended (unless the store already did); return the record.

        `provisioned` says the device answered finish:000 (and proved its DAC when it was
        challenged): its DAC is confirmed even when a post step then failed. `attestation` (the
        challenge and any answer) is recorded with the attempt.
        """
        status = None
        if attempt.assignment_id is not None:
            if provisioned:
                status = AssignmentStatus.CONFIRMED
            elif outcome is Outcome.ATTESTATION_FAILED or (
                outcome is Outcome.DEVICE_ERROR and device_code is not None
            ):
                # The device said no (a finish code), or stored a DAC it cannot prove: that DAC
                # is never used. A device error without a code (a letter read-back that failed)
                # leaves it unknown.
                status = AssignmentStatus.FAILED
            else:
                status = AssignmentStatus.UNKNOWN
        end = AttemptEnd(
            outcome=outcome,
            detail=detail,
            ended_at=utcnow(),
            device_code=device_code,
            assignment_id=attempt.assignment_id,
            assignment_status=status,
            dac_serial=attempt.dac_serial,
            transcript=transcript,
            attest_nonce=attestation.nonce.hex() if attestation is not None else None,
            attest_signature=(
                base64.b64encode(attestation.signature).decode("ascii")
                if attestation is not None and attestation.signature is not None
                else None
            ),
        )
        log = attempt.log.bind(uid=attempt.start.uid, attempt_id=attempt.start.attempt_id)
        if not attempt.recorded:
            try:
                started = self._clock()
                await self._with_database(
                    attempt, lambda: self.store.end_attempt(attempt.start, end)
                )
                seconds = self._clock() - started
                attempt.observer.database_committed(attempt.start, DB_END_ATTEMPT, seconds)
                attempt.recorded = True
            except StoreError as exc:
                log.error("attempt_not_recorded", detail=str(exc))
        if provisioned and attempt.onboarding is not None:
            self._onboarding.print_label_soon(attempt.onboarding, log)
        return end

    async def _issue(self, attempt: Attempt, uid: str, csr: CsrInfo) -> IssuedDac:
        """Ask the issuer; while it is unavailable, keep the device and ask again after a
        back-off of at least its `retry_after`, telling the jig it waits meanwhile."""
        backoff: Backoff | None = None
        while True:
            try:
                dac = await self.issuer.issue(uid, csr)
            except IssuerUnavailable as exc:
                if backoff is None:
                    backoff = issuer_backoff()
                    attempt.log.warning("issuer_unavailable", detail=str(exc))
                    attempt.on_wait(JigState.WAITING_FOR_ISSUER)
                await asyncio.sleep(max(backoff.next_delay(), exc.retry_after or 0.0))
                continue
            except BaseException:
                if backoff is not None:
                    attempt.on_wait(None)
                raise
            if backoff is not None:
                attempt.log.info("issuer_back")
                attempt.on_wait(None)
            return dac

    async def _with_database(self, attempt: Attempt, call: Callable[[], Awaitable[T]]) -> T:
        """Retry while the database is away, telling the jig it waits meanwhile."""
        backoff: Backoff | None = None
        while True:
            try:
                result = await call()
            except DatabaseUnavailable as exc:
                if backoff is None:
                    backoff = database_backoff()
                    attempt.log.warning("database_unavailable", detail=str(exc))
                    attempt.on_wait(JigState.WAITING_FOR_DATABASE)
                await asyncio.sleep(backoff.next_delay())
                continue
            if backoff is not None:
                attempt.log.info("database_back")
                attempt.on_wait(None)
            return result
