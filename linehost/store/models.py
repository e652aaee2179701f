"""The schema: attempts, assignments, the hash-chained audit log and the results outbox.

The Alembic revisions in `migrations/` are the source of truth; these models must match them
(tests/store/test_store_migrations.py fails when they do not).
"""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    DateTime,
    Dialect,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from linehost.protocol.outcomes import AssignmentStatus, Outcome
from linehost.records import REVOCATION_REASONS

#: Integer ids that will not run out (SQLite needs plain INTEGER for its rowid alias).
BigId = BigInteger().with_variant(Integer(), "sqlite")

#: The SQL predicate of a "live" assignment: one that still binds a DAC and a key to a device.
LIVE_PREDICATE = "status IN ('issued', 'confirmed', 'unknown')"

NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

UID_LEN = 64  # 8..64 hex digits (jig protocol v1)
NAME_LEN = 64  # line, station, jig, work order
SERIAL_LEN = 64  # Matter caps DAC serials at 20 octets = 40 hex digits
SHA256_LEN = 64


def _in_list(values: list[str]) -> str:
    return ", ".join(f"'{v}'" for v in values)


OUTCOME_CHECK = f"outcome IS NULL OR outcome IN ({_in_list([o.value for o in Outcome])})"
STATUS_CHECK = f"status IN ({_in_list([s.value for s in AssignmentStatus])})"
ENTITY_CHECK = "entity IN ('attempt', 'assignment', 'control')"


class UtcDateTime(TypeDecorator[datetime]):
    """A timezone-aware UTC datetime on every engine (SQLite keeps it as naive UTC text)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"naive datetime {value.isoformat()}: linehost stores aware UTC")
        value = value.astimezone(UTC)
        if dialect.name == "sqlite":
            return value.replace(tzinfo=None)
        return value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


class Base(DeclarativeBase):
    """Declarative base carrying the constraint naming convention."""

    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class Assignment(Base):
    """One DAC bound to one device UID, and where that binding stands."""

    __tablename__ = "assignments"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    uid: Mapped[str] = mapped_column(String(UID_LEN))
    status: Mapped[str] = mapped_column(String(16))
    dac_serial: Mapped[str] = mapped_column(String(SERIAL_LEN))
    dac_sha256: Mapped[str] = mapped_column(String(SHA256_LEN))
    dac_pem: Mapped[str] = mapped_column(Text)
    public_key_sha256: Mapped[str] = mapped_column(String(SHA256_LEN))
    pai_sha256: Mapped[str] = mapped_column(String(SHA256_LEN))
    vid: Mapped[str] = mapped_column(String(4))
    pid: Mapped[str] = mapped_column(String(4))
    line: Mapped[str] = mapped_column(String(NAME_LEN))
    station: Mapped[str] = mapped_column(String(NAME_LEN))
    jig: Mapped[str] = mapped_column(String(NAME_LEN))
    attempt_id: Mapped[str] = mapped_column(String(36))
    work_order: Mapped[str | None] = mapped_column(String(NAME_LEN))
    issued_at: Mapped[datetime] = mapped_column(UtcDateTime)
    confirmed_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime)
    bundle_entry_id: Mapped[int | None] = mapped_column(BigInteger)
    # How the device showed the key this DAC carries: "csr" (proof of possession) or "none".
    key_proof: Mapped[str] = mapped_column(String(8), server_default=text("'csr'"))

    __table_args__ = (
        CheckConstraint(STATUS_CHECK, name="status"),
        UniqueConstraint("dac_serial"),
        UniqueConstraint("dac_sha256"),
        Index("ix_assignments_uid", "uid"),
        Index("ix_assignments_issued_at", "issued_at"),
        Index("ix_assignments_attempt_id", "attempt_id"),
        # The database, not the code, guarantees one live assignment per key and per UID.
        Index(
            "ux_assignments_live_public_key",
            "public_key_sha256",
            unique=True,
            sqlite_where=text(LIVE_PREDICATE),
            postgresql_where=text(LIVE_PREDICATE),
        ),
        Index(
            "ux_assignments_live_uid",
            "uid",
            unique=True,
            sqlite_where=text(LIVE_PREDICATE),
            postgresql_where=text(LIVE_PREDICATE),
        ),
    )


class Attempt(Base):
    """One device on one jig, from its UID line to its outcome."""

    __tablename__ = "attempts"

    attempt_id: Mapped[str] = mapped_column(String(36), primary_key=True)
    line: Mapped[str] = mapped_column(String(NAME_LEN))
    station: Mapped[str] = mapped_column(String(NAME_LEN))
    jig: Mapped[str] = mapped_column(String(NAME_LEN))
    uid: Mapped[str | None] = mapped_column(String(UID_LEN))
    outcome: Mapped[str | None] = mapped_column(String(32))
    detail: Mapped[str] = mapped_column(Text)
    device_code: Mapped[int | None] = mapped_column(Integer)
    dac_serial: Mapped[str | None] = mapped_column(String(SERIAL_LEN))
    assignment_id: Mapped[int | None] = mapped_column(BigId, ForeignKey("assignments.id"))
    work_order: Mapped[str | None] = mapped_column(String(NAME_LEN))
    started_at: Mapped[datetime] = mapped_column(UtcDateTime)
    ended_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    transcript: Mapped[str] = mapped_column(Text)
    key_proof: Mapped[str] = mapped_column(String(8), server_default=text("'csr'"))
    # The attestation extension (v1.1): the challenge N (hex) and the device's answer (base64).
    attest_nonce: Mapped[str | None] = mapped_column(String(64))
    attest_signature: Mapped[str | None] = mapped_column(Text)

    __table_args__ = (
        CheckConstraint(OUTCOME_CHECK, name="outcome"),
        Index("ix_attempts_uid", "uid"),
        Index("ix_attempts_dac_serial", "dac_serial"),
        Index("ix_attempts_started_at", "started_at"),
        Index("ix_attempts_assignment_id", "assignment_id"),
        # Small: only attempts still running, for recovery after a crash.
        Index(
            "ix_attempts_running",
            "line",
            sqlite_where=text("outcome IS NULL"),
            postgresql_where=text("outcome IS NULL"),
        ),
    )


class AuditEntry(Base):
    """One append-only audit event, hash-chained per line; never updated or deleted."""

    __tablename__ = "audit_log"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    line: Mapped[str] = mapped_column(String(NAME_LEN))
    seq: Mapped[int] = mapped_column(BigInteger)
    at: Mapped[datetime] = mapped_column(UtcDateTime)
    entity: Mapped[str] = mapped_column(String(16))
    entity_id: Mapped[str] = mapped_column(String(64))
    event: Mapped[str] = mapped_column(String(32))
    data: Mapped[str] = mapped_column(Text)
    prev_hash: Mapped[str] = mapped_column(String(64))
    row_hash: Mapped[str] = mapped_column(String(64))

    __table_args__ = (
        CheckConstraint(ENTITY_CHECK, name="entity"),
        UniqueConstraint("line", "seq"),
        Index("ix_audit_log_entity", "entity", "entity_id", "id"),
        Index("ix_audit_log_at", "at"),
    )


class OutboxMessage(Base):
    """A message waiting for (or already given to) the MQTT relay, in id order."""

    __tablename__ = "outbox"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    line: Mapped[str] = mapped_column(String(NAME_LEN))
    topic: Mapped[str] = mapped_column(String(32))
    payload: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime)
    sent_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    # The Sparkplug B edge node's own delivery cursor over the same rows (issue 16).
    sparkplug_sent_at: Mapped[datetime | None] = mapped_column(UtcDateTime)

    __table_args__ = (
        Index("ix_outbox_pending", "line", "sent_at", "id"),
        Index("ix_outbox_sparkplug_pending", "line", "sparkplug_sent_at", "id"),
    )


class SparkplugNode(Base):
    """The last Sparkplug B birth/death sequence number (bdSeq) of one edge node (issue 16)."""

    __tablename__ = "sparkplug_nodes"

    group_id: Mapped[str] = mapped_column(String(NAME_LEN), primary_key=True)
    edge_node_id: Mapped[str] = mapped_column(String(NAME_LEN), primary_key=True)
    bd_seq: Mapped[int] = mapped_column(Integer)
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime)


class BundleEntry(Base):
    """One pre-issued DAC for one chip UID, waiting in the pool until a device claims it."""

    __tablename__ = "bundle_entries"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    bundle: Mapped[str] = mapped_column(String(NAME_LEN))
    uid: Mapped[str] = mapped_column(String(UID_LEN))
    dac_serial: Mapped[str] = mapped_column(String(SERIAL_LEN))
    dac_sha256: Mapped[str] = mapped_column(String(SHA256_LEN))
    dac_pem: Mapped[str] = mapped_column(Text)
    public_key_sha256: Mapped[str] = mapped_column(String(SHA256_LEN))
    pai_sha256: Mapped[str] = mapped_column(String(SHA256_LEN))
    vid: Mapped[str] = mapped_column(String(4))
    pid: Mapped[str] = mapped_column(String(4))
    source: Mapped[str] = mapped_column(Text)  # file (and CSV line) it was imported from
    imported_at: Mapped[datetime] = mapped_column(UtcDateTime)
    claimed_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    claim_token: Mapped[str | None] = mapped_column(String(36))
    claimed_by: Mapped[str | None] = mapped_column(String(NAME_LEN))  # line name

    __table_args__ = (
        # One DAC per chip and one chip per DAC: importing a bundle twice changes nothing.
        UniqueConstraint("uid"),
        UniqueConstraint("dac_sha256"),
        Index("ix_bundle_entries_bundle", "bundle"),
    )


class OnboardingData(Base):
    """One device's Matter commissioning data (issue 7); the passcode only sealed and tagged."""

    __tablename__ = "onboarding"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    uid: Mapped[str] = mapped_column(String(UID_LEN))
    vid: Mapped[str] = mapped_column(String(4))
    pid: Mapped[str] = mapped_column(String(4))
    assignment_id: Mapped[int | None] = mapped_column(BigId, ForeignKey("assignments.id"))
    serial_num: Mapped[str] = mapped_column(String(32))
    serial_seq: Mapped[int | None] = mapped_column(BigInteger)
    discriminator: Mapped[int] = mapped_column(Integer)
    passcode_sealed: Mapped[str] = mapped_column(Text)  # base64(nonce || AES-GCM ciphertext)
    passcode_tag: Mapped[str] = mapped_column(String(64))  # HMAC: uniqueness without plaintext
    key_id: Mapped[str] = mapped_column(String(16))
    spake2p_it: Mapped[int] = mapped_column(Integer)
    spake2p_salt: Mapped[str] = mapped_column(String(64))
    spake2p_verifier: Mapped[str] = mapped_column(String(160))
    rd_uid: Mapped[str | None] = mapped_column(String(64))
    mfg_date: Mapped[str] = mapped_column(String(10))
    hw_ver: Mapped[int] = mapped_column(Integer)
    hw_ver_str: Mapped[str] = mapped_column(String(64))
    commissioning_flow: Mapped[int] = mapped_column(Integer)
    discovery: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime)

    __table_args__ = (
        CheckConstraint("discriminator BETWEEN 0 AND 4095", name="discriminator"),
        # The database enforces what must never repeat.
        UniqueConstraint("serial_num"),
        UniqueConstraint("vid", "pid", "discriminator", "passcode_tag"),
        UniqueConstraint("uid", "vid", "pid"),
        UniqueConstraint("rd_uid"),
        Index("ix_onboarding_vid_pid_id", "vid", "pid", "id"),
    )


class OnboardingCounter(Base):
    """A named sequence shared by every host on the database (serials, discriminators)."""

    __tablename__ = "onboarding_counters"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[int] = mapped_column(BigInteger)


class WorkOrder(Base):
    """A batch with a fixed quantity; `claimed` counts its live assignments (issue 8).

    Every host on the database claims a slot with a guarded UPDATE in the transaction that
    records the assignment, so together they never exceed `quantity`.
    """

    __tablename__ = "work_orders"

    id: Mapped[str] = mapped_column(String(NAME_LEN), primary_key=True)
    quantity: Mapped[int] = mapped_column(BigInteger)
    claimed: Mapped[int] = mapped_column(BigInteger)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime)
    closed_at: Mapped[datetime | None] = mapped_column(UtcDateTime)  # no more devices after it
    closed_by: Mapped[str | None] = mapped_column(String(128))  # who closed it (OPC UA user)

    __table_args__ = (
        CheckConstraint("quantity > 0", name="quantity"),
        CheckConstraint("claimed >= 0 AND claimed <= quantity", name="claimed"),
    )


class JigStatusRow(Base):
    """What each jig shows, refreshed by its host about every second (`linehost status`)."""

    __tablename__ = "jig_status"

    line: Mapped[str] = mapped_column(String(NAME_LEN), primary_key=True)
    station: Mapped[str] = mapped_column(String(NAME_LEN), primary_key=True)
    jig: Mapped[str] = mapped_column(String(NAME_LEN), primary_key=True)
    state: Mapped[str] = mapped_column(String(32))
    uid: Mapped[str | None] = mapped_column(String(UID_LEN))
    attempt_id: Mapped[str | None] = mapped_column(String(36))
    since: Mapped[datetime] = mapped_column(UtcDateTime)
    ok: Mapped[int] = mapped_column(Integer)
    failed: Mapped[int] = mapped_column(Integer)
    last_outcome: Mapped[str | None] = mapped_column(String(32))
    last_detail: Mapped[str | None] = mapped_column(Text)
    last_uid: Mapped[str | None] = mapped_column(String(UID_LEN))
    work_order: Mapped[str | None] = mapped_column(String(NAME_LEN))
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime)


# Counting a work order's devices and attempts (issue 8).
Index("ix_assignments_work_order", Assignment.work_order, Assignment.status)
Index("ix_attempts_work_order", Attempt.work_order, Attempt.outcome)

metadata = Base.metadata
attempts = metadata.tables["attempts"]
assignments = metadata.tables["assignments"]
audit_log = metadata.tables["audit_log"]
outbox = metadata.tables["outbox"]
bundle_entries = metadata.tables["bundle_entries"]
onboarding = metadata.tables["onboarding"]
onboarding_counters = metadata.tables["onboarding_counters"]
work_orders = metadata.tables["work_orders"]
jig_status = metadata.tables["jig_status"]
sparkplug_nodes = metadata.tables["sparkplug_nodes"]


class AuditCheckpointRow(Base):
    """A signed checkpoint of one line's audit Merkle tree (issue 14; also kept outside)."""

    __tablename__ = "audit_checkpoints"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    line: Mapped[str] = mapped_column(String(NAME_LEN))
    seq: Mapped[int] = mapped_column(BigInteger)
    tree_size: Mapped[int] = mapped_column(BigInteger)
    head_hash: Mapped[str] = mapped_column(String(64))
    root_hash: Mapped[str] = mapped_column(String(64))
    at: Mapped[datetime] = mapped_column(UtcDateTime)
    algorithm: Mapped[str] = mapped_column(String(32))
    key_id: Mapped[str] = mapped_column(String(64))
    signature: Mapped[str] = mapped_column(Text)
    frontier: Mapped[str] = mapped_column(Text)  # JSON list of hex: resume without a re-read

    __table_args__ = (UniqueConstraint("line", "tree_size"),)


audit_checkpoints = metadata.tables["audit_checkpoints"]


class Revocation(Base):
    """One DAC taken back: at most once, and only a DAC the database knows (issue 13)."""

    __tablename__ = "revocations"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    dac_serial: Mapped[str] = mapped_column(
        String(SERIAL_LEN), ForeignKey("assignments.dac_serial")
    )
    pai_sha256: Mapped[str] = mapped_column(String(SHA256_LEN))
    reason: Mapped[str] = mapped_column(String(32))
    revoked_at: Mapped[datetime] = mapped_column(UtcDateTime)
    revoked_by: Mapped[str] = mapped_column(String(128))

    __table_args__ = (
        UniqueConstraint("dac_serial"),
        CheckConstraint(f"reason IN ({_in_list(list(REVOCATION_REASONS))})", name="reason"),
        Index("ix_revocations_pai_sha256", "pai_sha256", "id"),
    )


class CrlNumber(Base):
    """The last CRL number signed for one PAI: it only grows (RFC 5280 5.2.3)."""

    __tablename__ = "crl_numbers"

    pai_sha256: Mapped[str] = mapped_column(String(SHA256_LEN), primary_key=True)
    crl_number: Mapped[int] = mapped_column(BigInteger)
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime)

    __table_args__ = (CheckConstraint("crl_number > 0", name="positive"),)


revocations = metadata.tables["revocations"]
crl_numbers = metadata.tables["crl_numbers"]
