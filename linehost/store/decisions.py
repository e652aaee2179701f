"""The store's decisions as pure functions over plain data: what to do with a device's key."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Final, Literal

from linehost.protocol.outcomes import LIVE_STATUSES, AssignmentStatus, Outcome

#: The detail of an attempt refused because its work order has no slot left (issue 8).
WORK_ORDER_COMPLETE: Final = "work order complete"
#: The detail of an attempt refused because a supervisor closed its work order.
WORK_ORDER_CLOSED: Final = "work order closed"


@dataclass(frozen=True, slots=True)
class LiveAssignment:
    """What a decision needs to know about an existing assignment."""

    id: int | None  # None while not yet inserted
    uid: str
    status: AssignmentStatus
    public_key_sha256: str
    dac_serial: str
    revoked: bool = False  # the DAC is revoked: never delivered again


@dataclass(frozen=True, slots=True)
class AssignDecision:
    """issue: record the candidate (after superseding `supersede`); redeliver: send `target`
    again; reject / quota_full: send nothing, end the attempt with `outcome` and `detail`
    (quota_full: the work order has no slot left)."""

    kind: Literal["issue", "redeliver", "reject", "quota_full"]
    target: LiveAssignment | None = None
    supersede: tuple[LiveAssignment, ...] = field(default_factory=tuple)
    outcome: Outcome | None = None
    detail: str = ""


def decide_assign(
    uid: str,
    public_key_sha256: str,
    existing: Iterable[LiveAssignment],
    *,
    allow_reprovision: bool = False,
) -> AssignDecision:
    """Decide for a device `uid` presenting `public_key_sha256`, given the live assignments
    that share its key or its UID (others are ignored)."""
    live = [a for a in existing if a.status in LIVE_STATUSES]
    for other in live:
        if other.public_key_sha256 == public_key_sha256 and other.uid != uid:
            return AssignDecision(
                kind="reject",
                outcome=Outcome.DUPLICATE_KEY,
                detail=f"public key already assigned to UID {other.uid}",
            )
    mine = [a for a in live if a.uid == uid]
    for current in mine:
        if current.public_key_sha256 != public_key_sha256:
            continue
        if not current.revoked:
            return AssignDecision(kind="redeliver", target=current)
        if not allow_reprovision:
            return AssignDecision(
                kind="reject",
                outcome=Outcome.ALREADY_PROVISIONED,
                detail=(
                    f"UID's DAC {current.dac_serial} is revoked and re-provisioning is not allowed"
                ),
            )
    confirmed = [a for a in mine if a.status is AssignmentStatus.CONFIRMED]
    if confirmed and not allow_reprovision:
        return AssignDecision(
            kind="reject",
            outcome=Outcome.ALREADY_PROVISIONED,
            detail=(
                f"UID has confirmed DAC {confirmed[0].dac_serial} for a different key "
                "and re-provisioning is not allowed"
            ),
        )
    return AssignDecision(kind="issue", supersede=tuple(mine))


def decide_quota(
    decision: AssignDecision,
    work_order: str,
    quantity: int,
    claimed: int,
    freed: int,
    *,
    closed: bool = False,
) -> AssignDecision:
    """`decision`, or a quota_full refusal when it would issue a DAC beyond the work order's
    `quantity` (`claimed` slots taken so far, `freed` of them given back by its supersedes)
    or for a work order that is `closed`."""
    if decision.kind != "issue":
        return decision
    if closed:
        return AssignDecision(
            kind="quota_full",
            outcome=Outcome.ISSUER_ERROR,
            detail=f"{WORK_ORDER_CLOSED}: {work_order} takes no more devices",
        )
    if claimed - freed < quantity:
        return decision
    return AssignDecision(
        kind="quota_full",
        outcome=Outcome.ISSUER_ERROR,
        detail=f"{WORK_ORDER_COMPLETE}: {work_order} has all {quantity} devices",
    )


def next_assignment_status(
    current: AssignmentStatus, requested: AssignmentStatus | None
) -> AssignmentStatus | None:
    """The status an attempt's end moves its assignment to, or None to leave it as it is.

    Only an assignment still waiting for a result (issued, unknown) changes. With no
    request, an `issued` one becomes `unknown`: it may have been delivered, nobody knows.
    A confirmed DAC stays confirmed (the device holds it), and failed / superseded are final.
    """
    if current not in (AssignmentStatus.ISSUED, AssignmentStatus.UNKNOWN):
        return None
    if requested is None:
        requested = AssignmentStatus.UNKNOWN
    if requested not in (
        AssignmentStatus.CONFIRMED,
        AssignmentStatus.FAILED,
        AssignmentStatus.UNKNOWN,
    ):
        raise ValueError(f"an attempt cannot end its assignment as {requested.value!r}")
    if requested is current:
        return None
    return requested
