"""The domain operations the writer runs: assign, end an attempt, recover, mark results sent.

Each names the rows it needs (`want`), decides and changes the batch (`apply`), and answers
once the batch is committed (`result`).
"""

from __future__ import annotations

import asyncio
from abc import ABC, abstractmethod
from datetime import datetime
from typing import Any, Final, Generic, Literal, TypeVar

from linehost.errors import StoreError
from linehost.protocol.outcomes import LIVE_STATUSES, AssignmentStatus, Outcome
from linehost.records import (
    AssignRequest,
    AssignResult,
    AttemptEnd,
    AttemptStart,
    OnboardingRecord,
    iso_utc,
)
from linehost.store.batch import Batch, Wants
from linehost.store.decisions import (
    AssignDecision,
    LiveAssignment,
    decide_assign,
    decide_quota,
    next_assignment_status,
)
from linehost.store.onboarding import OnboardingRow
from linehost.store.rows import AssignmentRow, AttemptRow

INTERRUPTED_DETAIL: Final = "host stopped during attempt"

T = TypeVar("T")

_REJECT_OUTCOMES = (Outcome.DUPLICATE_KEY, Outcome.ALREADY_PROVISIONED, Outcome.ISSUER_ERROR)


class Op(ABC, Generic[T]):
    """One caller's request to the writer: what to read, what to change, what to answer."""

    def __init__(self) -> None:
        self.future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self.error: BaseException | None = None

    @abstractmethod
    def want(self, wants: Wants) -> None:
        """Name the rows `apply` needs."""

    @abstractmethod
    def apply(self, batch: Batch) -> None:
        """Decide and change the batch; raise (before changing anything) to refuse."""

    @abstractmethod
    def result(self) -> T:
        """The answer, once committed."""

    def key_taken(self) -> None:
        """The last try's public key was taken concurrently; give up on it next time."""

    def succeed(self) -> None:
        if self.future.done():
            return
        if self.error is not None:
            self.future.set_exception(self.error)
        else:
            self.future.set_result(self.result())

    def fail(self, exc: BaseException) -> None:
        if not self.future.done():
            self.future.set_exception(exc)


Answer = tuple[str, "AssignmentRow | None", Outcome | None, str]  # (kind, row, outcome, detail)


class AssignOp(Op[AssignResult]):
    """Assign: decide (pure), claim the work-order slot, insert the assignment."""

    def __init__(self, req: AssignRequest) -> None:
        super().__init__()
        self.req = req
        self.force_duplicate = False
        self._answer: Answer | None = None
        self._onboarding: OnboardingRecord | None = None

    def want(self, wants: Wants) -> None:
        start = self.req.attempt
        assert start.uid is not None
        wants.attempt_ids.add(start.attempt_id)
        wants.keys.add(self.req.public_key_sha256)
        wants.uids.add(start.uid)
        if start.work_order is not None:
            wants.work_orders.add(start.work_order)
        if self.req.onboarding is not None:
            wants.onboarding_uids.add(start.uid)
            wants.onboarding.append(self.req.onboarding)

    def key_taken(self) -> None:
        self.force_duplicate = True

    def apply(self, batch: Batch) -> None:
        req, start = self.req, self.req.attempt
        assert start.uid is not None
        self._answer = None
        self._onboarding = None
        recorded = batch.attempts.get(start.attempt_id)
        if recorded is not None:
            self._answer = _recorded(batch, recorded)
            if req.onboarding is not None and self._answer[1] is not None:
                found = batch.onboarding.existing(start.uid, req.onboarding.vid, req.onboarding.pid)
                self._onboarding = None if found is None else found.record()
            return
        existing = batch.sharing(req.public_key_sha256, start.uid)
        views = [row.live(revoked=row.dac_serial in batch.revoked) for row in existing]
        rows = {id(view): row for view, row in zip(views, existing, strict=True)}
        decision = self._decide(batch, views, rows)
        # Prepared before any change: a rule the config cannot meet refuses the whole op.
        onboarding: OnboardingRow | None = None
        if req.onboarding is not None and decision.kind in ("issue", "redeliver"):
            onboarding = batch.onboarding.prepare(req.onboarding, start)
        extra: dict[str, Any] = {}
        if onboarding is not None:
            self._onboarding = onboarding.record()
            extra = {"serial_num": onboarding.serial_num, "discriminator": onboarding.discriminator}
        attempt = batch.start_attempt(start)
        if decision.kind in ("reject", "quota_full"):
            assert decision.outcome is not None
            batch.end_attempt(
                attempt, outcome=decision.outcome.value, detail=decision.detail, ended_at=batch.now
            )
            kind = "quota_full" if decision.kind == "quota_full" else "rejected"
            self._answer = (kind, None, decision.outcome, decision.detail)
            return
        if decision.kind == "redeliver":
            assert decision.target is not None
            target = rows[id(decision.target)]
            _bind(attempt, target)
            if onboarding is not None:
                batch.onboarding.bind(onboarding, target)
            batch.audit_assignment(target, "assignment_redelivered", start.attempt_id, **extra)
            self._answer = ("redelivered", target, None, "")
            return
        for old in decision.supersede:
            batch.set_status(rows[id(old)], AssignmentStatus.SUPERSEDED, start.attempt_id)
        if start.work_order is not None:
            batch.claim_slot(start.work_order)
        row = self._insert(batch, attempt, extra)
        if onboarding is not None:
            batch.onboarding.bind(onboarding, row)
        self._answer = ("issued", row, None, "")

    def result(self) -> AssignResult:
        assert self._answer is not None
        kind, row, outcome, detail = self._answer
        if row is None:
            refusal: Literal["rejected", "quota_full"] = (
                "quota_full" if kind == "quota_full" else "rejected"
            )
            return AssignResult(kind=refusal, outcome=outcome, detail=detail)
        return AssignResult(
            kind="issued" if kind == "issued" else "redelivered",
            assignment_id=row.id,
            dac_pem=row.dac_pem,
            dac_serial=row.dac_serial,
            onboarding=self._onboarding,
        )

    def _decide(
        self,
        batch: Batch,
        views: list[LiveAssignment],
        rows: dict[int, AssignmentRow],
    ) -> AssignDecision:
        """The pure decision, then the concurrent-key override and the work-order quota."""
        req, start = self.req, self.req.attempt
        assert start.uid is not None
        decision = decide_assign(
            start.uid, req.public_key_sha256, views, allow_reprovision=req.allow_reprovision
        )
        if self.force_duplicate and decision.kind != "redeliver":
            return AssignDecision(
                kind="reject",
                outcome=Outcome.DUPLICATE_KEY,
                detail="public key assigned concurrently by another host",
            )
        work_order = start.work_order
        known = None if work_order is None else batch.work_orders.get(work_order)
        if work_order is None or known is None or decision.kind != "issue":
            return decision
        freed = sum(
            1
            for old in decision.supersede
            if rows[id(old)].work_order == work_order and old.status in LIVE_STATUSES
        )
        quantity, claimed = known
        return decide_quota(
            decision, work_order, quantity, claimed + batch.slots[work_order], freed,
            closed=work_order in batch.closed_work_orders,
        )  # fmt: skip

    def _insert(self, batch: Batch, attempt: AttemptRow, extra: dict[str, Any]) -> AssignmentRow:
        """Record the candidate as a new `issued` assignment of this attempt."""
        req, start = self.req, self.req.attempt
        assert start.uid is not None
        dac = req.candidate
        row = AssignmentRow(
            id=None,
            uid=start.uid,
            status=AssignmentStatus.ISSUED,
            dac_serial=dac.serial_hex,
            dac_sha256=dac.sha256,
            dac_pem=dac.pem,
            public_key_sha256=req.public_key_sha256,
            pai_sha256=dac.pai_sha256,
            vid=dac.vid,
            pid=dac.pid,
            line=start.line,
            station=start.station,
            jig=start.jig,
            attempt_id=start.attempt_id,
            work_order=start.work_order,
            issued_at=batch.now,
            confirmed_at=None,
            updated_at=batch.now,
            bundle_entry_id=dac.bundle_entry_id,
            key_proof=req.key_proof,
        )
        batch.add_assignment(row)
        _bind(attempt, row)
        batch.audit_assignment(
            row,
            "assignment_issued",
            start.attempt_id,
            dac_serial=row.dac_serial,
            pai_sha256=row.pai_sha256,
            vid=row.vid,
            pid=row.pid,
            line=row.line,
            station=row.station,
            jig=row.jig,
            work_order=row.work_order,
            issued_at=iso_utc(row.issued_at),
            bundle_entry_id=row.bundle_entry_id,
            key_proof=row.key_proof,
            **extra,
        )
        return row


def _bind(attempt: AttemptRow, row: AssignmentRow) -> None:
    attempt.dac_serial = row.dac_serial
    attempt.assignment_id = row.id
    attempt.assignment = row if row.id is None else None


def _recorded(batch: Batch, attempt: AttemptRow) -> Answer:
    """A retry of an assign that was already committed: the same answer again.

    The only refusal an assign records as issuer_error is the work-order quota (an issuer
    failure ends its attempt without an assign), so such an attempt of a work order is one.
    """
    if attempt.assignment_id is not None and attempt.outcome is None:
        row = batch.assignments.get(attempt.assignment_id)
        if row is None:
            raise StoreError(f"attempt {attempt.attempt_id}: its assignment is missing")
        kind = "issued" if row.attempt_id == attempt.attempt_id else "redelivered"
        return (kind, row, None, "")
    if attempt.assignment_id is None and attempt.outcome in _REJECT_OUTCOMES:
        outcome = Outcome(attempt.outcome)
        quota = outcome is Outcome.ISSUER_ERROR and attempt.work_order is not None
        return ("quota_full" if quota else "rejected", None, outcome, attempt.detail)
    state = attempt.outcome or "running without an assignment"
    raise StoreError(f"attempt {attempt.attempt_id} is already recorded ({state})")


class EndOp(Op[None]):
    def __init__(self, start: AttemptStart, end: AttemptEnd) -> None:
        super().__init__()
        self.start = start
        self.end = end

    def want(self, wants: Wants) -> None:
        wants.attempt_ids.add(self.start.attempt_id)
        if self.end.assignment_id is not None:
            wants.assignment_ids.add(self.end.assignment_id)

    def apply(self, batch: Batch) -> None:
        start, end = self.start, self.end
        attempt = batch.attempts.get(start.attempt_id)
        if attempt is not None and attempt.outcome is not None:
            return  # already ended: a retry after an unclear commit
        assignment_id = end.assignment_id
        if assignment_id is None and attempt is not None:
            assignment_id = attempt.assignment_id
        assignment = None
        if assignment_id is not None:
            assignment = batch.assignments.get(assignment_id)
            if assignment is None:
                raise StoreError(f"attempt {start.attempt_id}: no assignment {assignment_id}")
        if attempt is None:
            attempt = batch.start_attempt(start)
            attempt.assignment_id = assignment_id
        dac_serial = end.dac_serial or attempt.dac_serial
        if dac_serial is None and assignment is not None:
            dac_serial = assignment.dac_serial
        batch.end_attempt(
            attempt,
            outcome=Outcome(end.outcome).value,
            detail=end.detail,
            device_code=end.device_code,
            dac_serial=dac_serial,
            ended_at=end.ended_at,
            transcript=end.transcript,
            attest_nonce=end.attest_nonce,
            attest_signature=end.attest_signature,
        )
        if assignment is not None:
            requested = end.assignment_status
            if requested is not None:
                requested = AssignmentStatus(requested)
            status = next_assignment_status(assignment.status, requested)
            if status is not None:
                batch.set_status(assignment, status, start.attempt_id, confirmed_at=end.ended_at)

    def result(self) -> None:
        return None


class RecoverOp(Op[int]):
    def __init__(self, line: str, now: datetime) -> None:
        super().__init__()
        self.line = line
        self.now = now
        self.count = 0

    def want(self, wants: Wants) -> None:
        wants.running_line = self.line

    def apply(self, batch: Batch) -> None:
        self.count = 0
        for attempt in batch.running:
            if attempt.outcome is not None:  # ended by an earlier operation of this batch
                continue
            batch.end_attempt(
                attempt,
                outcome=Outcome.DISCONNECTED.value,
                detail=INTERRUPTED_DETAIL,
                ended_at=self.now,
            )
            if attempt.assignment_id is not None:
                assignment = batch.assignments.get(attempt.assignment_id)
                if assignment is not None and assignment.status is AssignmentStatus.ISSUED:
                    batch.set_status(assignment, AssignmentStatus.UNKNOWN, attempt.attempt_id)
            self.count += 1

    def result(self) -> int:
        return self.count


class MarkSentOp(Op[None]):
    def __init__(self, line: str, ids: list[int], at: datetime) -> None:
        super().__init__()
        self.line = line
        self.ids = ids
        self.at = at

    def want(self, wants: Wants) -> None:
        pass

    def apply(self, batch: Batch) -> None:
        batch.sent.append((self.ids, self.at))

    def result(self) -> None:
        return None
