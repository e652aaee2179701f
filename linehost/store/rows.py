"""The rows a batch reads and changes, in memory: assignments and attempts with their changes."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from linehost.protocol.outcomes import AssignmentStatus
from linehost.records import AttemptStart, attempt_record
from linehost.store.decisions import LiveAssignment
from linehost.store.models import assignments, attempts


@dataclass(slots=True, eq=False)
class AssignmentRow:
    id: int | None
    uid: str
    status: AssignmentStatus
    dac_serial: str
    dac_sha256: str
    dac_pem: str
    public_key_sha256: str
    pai_sha256: str
    vid: str
    pid: str
    line: str
    station: str
    jig: str
    attempt_id: str
    work_order: str | None
    issued_at: datetime
    confirmed_at: datetime | None
    updated_at: datetime
    bundle_entry_id: int | None
    key_proof: str = "csr"
    changes: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_db(cls, row: Any) -> AssignmentRow:
        m = row._mapping
        return cls(**{k: m[k] for k in ASSIGNMENT_COLUMNS}, status=AssignmentStatus(m["status"]))

    def live(self, *, revoked: bool = False) -> LiveAssignment:
        return LiveAssignment(
            self.id, self.uid, self.status, self.public_key_sha256, self.dac_serial, revoked
        )

    def set(self, **values: Any) -> None:
        for key, value in values.items():
            setattr(self, key, value)
        if self.id is not None:
            self.changes.update(values)

    def insert_params(self) -> dict[str, Any]:
        params = {k: getattr(self, k) for k in ASSIGNMENT_COLUMNS if k != "id"}
        params["status"] = self.status.value
        return params


ASSIGNMENT_COLUMNS = [c.name for c in assignments.c if c.name != "status"]
ATTEMPT_COLUMNS = [c.name for c in attempts.c if c.name != "transcript"]


@dataclass(slots=True, eq=False)
class AttemptRow:
    attempt_id: str
    line: str
    station: str
    jig: str
    uid: str | None
    outcome: str | None
    detail: str
    device_code: int | None
    dac_serial: str | None
    assignment_id: int | None
    work_order: str | None
    started_at: datetime
    ended_at: datetime | None
    key_proof: str = "csr"
    is_new: bool = False
    assignment: AssignmentRow | None = None  # an assignment inserted in this batch
    transcript: str = ""
    attest_nonce: str | None = None
    attest_signature: str | None = None
    changes: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_db(cls, row: Any) -> AttemptRow:
        m = row._mapping
        return cls(**{k: m[k] for k in ATTEMPT_COLUMNS})

    @classmethod
    def begin(cls, start: AttemptStart) -> AttemptRow:
        return cls(
            attempt_id=start.attempt_id,
            line=start.line,
            station=start.station,
            jig=start.jig,
            uid=start.uid,
            outcome=None,
            detail="",
            device_code=None,
            dac_serial=None,
            assignment_id=None,
            work_order=start.work_order,
            started_at=start.started_at,
            ended_at=None,
            key_proof=start.key_proof,
            is_new=True,
        )

    def set(self, **values: Any) -> None:
        for key, value in values.items():
            setattr(self, key, value)
        if not self.is_new:
            self.changes.update(values)

    def record(self) -> dict[str, Any]:
        return attempt_record(
            {k: getattr(self, k) for k in ("attempt_id", "uid", "line", "station", "jig")}
            | {
                "outcome": self.outcome,
                "detail": self.detail,
                "device_code": self.device_code,
                "dac_serial": self.dac_serial,
                "started_at": self.started_at,
                "ended_at": self.ended_at,
                "work_order": self.work_order,
                "key_proof": self.key_proof,
                "attest_nonce": self.attest_nonce,
                "attest_signature": self.attest_signature,
            }
        )

    def insert_params(self) -> dict[str, Any]:
        params = {k: getattr(self, k) for k in ATTEMPT_COLUMNS}
        if self.assignment is not None:
            params["assignment_id"] = self.assignment.id
        params["transcript"] = self.transcript
        return params
