"""What the line hands to the store and gets back: plain data, no SQL."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

from linehost.pki.issuer import IssuedDac
from linehost.protocol.outcomes import AssignmentStatus, Outcome


@dataclass(frozen=True, slots=True)
class AttemptStart:
    """Who and where: fixed when the device's UID is read."""

    attempt_id: str  # UUID4 string
    line: str
    station: str
    jig: str
    uid: str | None  # None only for a protocol_error before a valid UID line
    started_at: datetime  # timezone-aware UTC
    work_order: str | None = None


@dataclass(frozen=True, slots=True)
class AssignRequest:
    """Bind a DAC to the device: `candidate` is used only when a new DAC is needed."""

    attempt: AttemptStart
    public_key_sha256: str
    candidate: IssuedDac
    allow_reprovision: bool = False
    onboarding: OnboardingRequest | None = None  # Matter commissioning data wanted too


@dataclass(frozen=True, slots=True)
class AssignResult:
    """The store's decision, durable when returned.

    kind = "issued": `candidate` was recorded as a new `issued` assignment.
    kind = "redelivered": an earlier live assignment for this UID and key is to be sent again.
    kind = "rejected": nothing is to be sent; `outcome` (duplicate_key / already_provisioned)
    and `detail` say why, and the attempt is already recorded as ended.
    """

    kind: Literal["issued", "redelivered", "rejected"]
    assignment_id: int | None = None
    dac_pem: str | None = None
    dac_serial: str | None = None
    outcome: Outcome | None = None
    detail: str = ""
    onboarding: OnboardingRecord | None = None  # the device's recorded commissioning data


@dataclass(frozen=True, slots=True)
class OnboardingRequest:
    """Commissioning data drawn by the line for one device; the store adds the rest.

    The store allocates the serial number and the discriminator and dates the record; it
    reuses what the device (UID, VID, PID) already has instead, so a device keeps its label.
    The passcode arrives sealed (encrypted) and with a keyed tag for the uniqueness rule.
    """

    vid: str
    pid: str
    discriminator_policy: Literal["sequential", "random"]
    serial_template: str
    passcode_sealed: str
    passcode_tag: str
    key_id: str
    spake2p_it: int
    spake2p_salt: str  # base64
    spake2p_verifier: str  # base64 of w0 || L
    rd_uid: str | None  # hex, or None when not enabled
    hw_ver: int
    hw_ver_str: str
    commissioning_flow: int
    discovery: int


@dataclass(frozen=True, slots=True)
class OnboardingRecord:
    """The commissioning data recorded for a device (the passcode still sealed)."""

    uid: str
    vid: str
    pid: str
    serial_num: str
    discriminator: int
    passcode_sealed: str
    key_id: str
    spake2p_it: int
    spake2p_salt: str
    spake2p_verifier: str
    rd_uid: str | None
    mfg_date: str  # YYYY-MM-DD
    hw_ver: int
    hw_ver_str: str
    commissioning_flow: int
    discovery: int


@dataclass(frozen=True, slots=True)
class AttemptEnd:
    """How an attempt ended, and what that means for its assignment (if it has one)."""

    outcome: Outcome
    detail: str
    ended_at: datetime
    device_code: int | None = None
    assignment_id: int | None = None
    assignment_status: AssignmentStatus | None = None  # confirmed / failed / unknown
    dac_serial: str | None = None
    transcript: str = ""


def iso_utc(moment: datetime | None) -> str | None:
    """ISO 8601 UTC with microseconds and a Z, e.g. `2026-11-22T05:01:02.123456Z`."""
    if moment is None:
        return None
    if moment.tzinfo is None:
        raise ValueError(f"naive datetime {moment.isoformat()}: linehost uses aware UTC")
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def attempt_record(row: Mapping[str, Any]) -> dict[str, Any]:
    """The contract attempt record (results topic, `audit attempts`) from an attempt's columns."""
    return {
        "attempt_id": row["attempt_id"],
        "uid": row["uid"],
        "line": row["line"],
        "station": row["station"],
        "jig": row["jig"],
        "outcome": row["outcome"],
        "detail": row["detail"],
        "device_code": row["device_code"],
        "dac_serial": row["dac_serial"],
        "started_at": iso_utc(row["started_at"]),
        "ended_at": iso_utc(row["ended_at"]),
        "work_order": row["work_order"],
    }


def assignment_record(row: Mapping[str, Any]) -> dict[str, Any]:
    """The contract audit export record (`audit export`) from an assignment's columns."""
    return {
        "uid": row["uid"],
        "status": row["status"],
        "dac_serial": row["dac_serial"],
        "dac_sha256": row["dac_sha256"],
        "dac_pem": row["dac_pem"],
        "pai_sha256": row["pai_sha256"],
        "vid": row["vid"],
        "pid": row["pid"],
        "line": row["line"],
        "station": row["station"],
        "jig": row["jig"],
        "attempt_id": row["attempt_id"],
        "issued_at": iso_utc(row["issued_at"]),
        "confirmed_at": iso_utc(row["confirmed_at"]),
        "work_order": row["work_order"],
    }
