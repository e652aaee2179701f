"""The plain records every layer passes around: data only, no I/O, imports nothing of ours but
the outcome vocabulary (a leaf module, so that no package has to import another sideways)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

from linehost.protocol.outcomes import AssignmentStatus, JigState, Outcome

#: How a device showed its key: a signed CSR (proof of possession) or a bare public key.
KeyProof = Literal["csr", "none"]


@dataclass(frozen=True, slots=True)
class CsrInfo:
    """A device key that passed every check (from a CSR, or bare), ready for a DAC."""

    public_key_der: bytes  # SubjectPublicKeyInfo, DER
    public_key_sha256: str  # lower-case hex of sha256(public_key_der)
    csr_der: bytes  # empty for a bare key (key_proof "none")
    key_proof: KeyProof = "csr"


@dataclass(frozen=True, slots=True)
class IssuedDac:
    """A DAC ready to be recorded and delivered (not yet recorded: nothing may send it yet)."""

    pem: str  # one PEM CERTIFICATE block, LF line ends, trailing LF
    der: bytes
    serial_hex: str  # upper-case hex of the serial integer, no prefix, no leading zeros
    sha256: str  # lower-case hex of sha256(der)
    public_key_sha256: str  # lower-case hex of sha256(SubjectPublicKeyInfo DER)
    pai_sha256: str  # lower-case hex of sha256(PAI DER)
    vid: str  # 4 upper-case hex digits
    pid: str  # 4 upper-case hex digits
    bundle_entry_id: int | None = None  # set by the bundle issuer


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
    key_proof: KeyProof = "csr"  # how the jig's protocol has devices show their key


@dataclass(frozen=True, slots=True)
class AssignRequest:
    """Bind a DAC to the device: `candidate` is used only when a new DAC is needed."""

    attempt: AttemptStart
    public_key_sha256: str
    candidate: IssuedDac
    allow_reprovision: bool = False
    onboarding: OnboardingRequest | None = None  # Matter commissioning data wanted too
    key_proof: KeyProof = "csr"  # recorded with a new assignment
    cd_sha256: str | None = None  # the Certification Declaration delivered with a new DAC


@dataclass(frozen=True, slots=True)
class AssignResult:
    """The store's decision, durable when returned.

    kind = "issued": `candidate` was recorded as a new `issued` assignment.
    kind = "redelivered": an earlier live assignment for this UID and key is to be sent again.
    kind = "rejected": nothing is to be sent; `outcome` (duplicate_key / already_provisioned)
    and `detail` say why, and the attempt is already recorded as ended.
    kind = "quota_full": refused like "rejected" (outcome issuer_error) because the attempt's
    work order has no slot left; the line shows the work order complete.
    """

    kind: Literal["issued", "redelivered", "rejected", "quota_full"]
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
    attest_nonce: str | None = None  # lower-case hex of the attestation challenge N (v1.1)
    attest_signature: str | None = None  # base64 of the device's DER signature, as answered


#: RFC 5280 CRLReason names a revocation may carry (removeFromCRL and 7, unused, left out).
REVOCATION_REASONS = (
    "unspecified",
    "keyCompromise",
    "cACompromise",
    "affiliationChanged",
    "superseded",
    "cessationOfOperation",
    "certificateHold",
    "privilegeWithdrawn",
    "aACompromise",
)


def iso_utc(moment: datetime | None) -> str | None:
    """ISO 8601 UTC with microseconds and a Z, e.g. `2026-11-22T05:01:02.123456Z`."""
    if moment is None:
        return None
    if moment.tzinfo is None:
        raise ValueError(f"naive datetime {moment.isoformat()}: linehost uses aware UTC")
    if moment.tzinfo is not UTC:
        moment = moment.astimezone(UTC)
    # isoformat is ~40 % cheaper than strftime, and this runs several times per device.
    return moment.replace(tzinfo=None).isoformat(timespec="microseconds") + "Z"


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
        "key_proof": row.get("key_proof", "csr"),
        "attest_nonce": row.get("attest_nonce"),
        "attest_signature": row.get("attest_signature"),
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
        "revoked_at": iso_utc(row.get("revoked_at")),
        "revocation_reason": row.get("revocation_reason"),
        "key_proof": row.get("key_proof", "csr"),
        "cd_sha256": row.get("cd_sha256"),
    }


def utcnow() -> datetime:
    """Timezone-aware now in UTC (the only clock for recorded times)."""
    return datetime.now(UTC)


@dataclass(slots=True)
class JigStatus:
    """One jig's live status (contracts.md: the `jigs/{station}/{jig}/state` payload)."""

    line: str
    station: str
    jig: str
    state: JigState = JigState.OFFLINE
    uid: str | None = None
    attempt_id: str | None = None
    since: datetime = field(default_factory=utcnow)
    ok: int = 0
    failed: int = 0
    last_outcome: Outcome | None = None
    last_detail: str | None = None
    last_uid: str | None = None

    def attempt_ended(self, outcome: Outcome, detail: str, uid: str | None) -> None:
        """Count a finished attempt and show its result."""
        if outcome is Outcome.PROVISIONED:
            self.ok += 1
        else:
            self.failed += 1
        self.last_outcome = outcome
        self.last_detail = detail
        self.last_uid = uid
        self.attempt_id = None

    def payload(self) -> dict[str, object]:
        """The MQTT/dashboard JSON object."""
        return {
            "state": self.state.value,
            "uid": self.uid,
            "attempt_id": self.attempt_id,
            "since": iso_utc(self.since),
            "ok": self.ok,
            "failed": self.failed,
            "last_outcome": self.last_outcome.value if self.last_outcome else None,
            "last_detail": self.last_detail,
            "last_uid": self.last_uid,
            "line": self.line,
            "station": self.station,
            "jig": self.jig,
        }


# --- pre-issued DAC bundles (the pool is store.bundles; its issuer is pki.bundle) ---------


@dataclass(frozen=True, slots=True)
class BundleDac:
    """A checked pre-issued DAC, ready to enter the pool."""

    uid: str  # upper-case hex
    dac_pem: str
    dac_serial: str
    dac_sha256: str
    public_key_sha256: str
    pai_sha256: str
    vid: str
    pid: str
    source: str  # where it came from: a file, or "file:line"


@dataclass(frozen=True, slots=True)
class PoolEntry:
    """One entry of the pool as stored."""

    id: int
    bundle: str
    uid: str
    dac_pem: str
    dac_serial: str
    dac_sha256: str
    public_key_sha256: str
    pai_sha256: str
    vid: str
    pid: str
    source: str
    imported_at: datetime
    claimed_at: datetime | None
    claim_token: str | None
    claimed_by: str | None


@dataclass(frozen=True, slots=True)
class UsedBy:
    """The assignment that recorded a bundle DAC."""

    id: int
    uid: str
    status: str
    public_key_sha256: str


@dataclass(frozen=True, slots=True)
class ImportResult:
    """What an import did: `rejected` holds (source, reason) for entries left out."""

    added: int
    unchanged: int
    rejected: list[tuple[str, str]]


@dataclass(frozen=True, slots=True)
class BundleCount:
    """Depletion of one bundle: `remaining` entries were never claimed."""

    bundle: str
    total: int
    claimed: int
    remaining: int


@dataclass(frozen=True, slots=True)
class CrlState:
    """The CRL a keeper last signed: what the host publishes on `{p}/{line}/host/crl`."""

    pai_skid: str  # the PAI's subject key identifier, hex (names the CRL file too)
    number: int
    this_update: datetime
    next_update: datetime
    revoked: int
