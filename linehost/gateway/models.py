"""The gateway's schema: issuances, quota counters, client certificates, the audit chain.

The gateway keeps its own database (not a line's). The Alembic revisions in
`migrations/gateway/` are the source of truth; tests/gateway/test_gateway_store.py fails
when these models and the migrations disagree. `audit_log` has the line store's columns, so
`linehost.store.audit.Audit.verify_audit_chain` checks the gateway's chain as it checks a line's.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    Float,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from linehost.store.models import (
    NAME_LEN,
    NAMING_CONVENTION,
    SERIAL_LEN,
    SHA256_LEN,
    UID_LEN,
    BigId,
    UtcDateTime,
)

#: An issuance that still binds its DAC and key to its UID (one per UID, one per key).
LIVE_ISSUANCE = "status = 'issued'"


class Base(DeclarativeBase):
    """Declarative base of the gateway database."""

    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class Issuance(Base):
    """One DAC signed for one UID at one client's request."""

    __tablename__ = "issuances"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    client: Mapped[str] = mapped_column(String(NAME_LEN))
    uid: Mapped[str] = mapped_column(String(UID_LEN))
    work_order: Mapped[str | None] = mapped_column(String(NAME_LEN))
    status: Mapped[str] = mapped_column(String(16))
    public_key_sha256: Mapped[str] = mapped_column(String(SHA256_LEN))
    dac_serial: Mapped[str] = mapped_column(String(SERIAL_LEN))
    dac_sha256: Mapped[str] = mapped_column(String(SHA256_LEN))
    dac_pem: Mapped[str] = mapped_column(Text)
    pai_sha256: Mapped[str] = mapped_column(String(SHA256_LEN))
    vid: Mapped[str] = mapped_column(String(4))
    pid: Mapped[str] = mapped_column(String(4))
    issued_at: Mapped[datetime] = mapped_column(UtcDateTime)
    superseded_at: Mapped[datetime | None] = mapped_column(UtcDateTime)

    __table_args__ = (
        CheckConstraint("status IN ('issued', 'superseded')", name="status"),
        UniqueConstraint("dac_serial"),
        UniqueConstraint("dac_sha256"),
        Index("ix_issuances_client_issued_at", "client", "issued_at"),
        Index("ix_issuances_work_order", "work_order"),
        # The database, not the code, keeps one live DAC per UID and per key.
        Index(
            "ux_issuances_live_uid",
            "uid",
            unique=True,
            sqlite_where=text(LIVE_ISSUANCE),
            postgresql_where=text(LIVE_ISSUANCE),
        ),
        Index(
            "ux_issuances_live_public_key",
            "public_key_sha256",
            unique=True,
            sqlite_where=text(LIVE_ISSUANCE),
            postgresql_where=text(LIVE_ISSUANCE),
        ),
    )


class Quota(Base):
    """The DAC counter of one client or work order, its cap and (clients) its rate limit.

    `issued` only grows in the transaction that records the issuances, under the write lock
    (a guarded UPDATE, or the INSERT of a new counter), so every gateway process on the
    database together never passes `max_dacs`.
    """

    __tablename__ = "quotas"

    scope: Mapped[str] = mapped_column(String(16), primary_key=True)
    name: Mapped[str] = mapped_column(String(NAME_LEN), primary_key=True)
    max_dacs: Mapped[int | None] = mapped_column(BigInteger)  # None: no cap
    issued: Mapped[int] = mapped_column(BigInteger)
    rate: Mapped[float | None] = mapped_column(Float)  # DACs per second; None: the config's
    burst: Mapped[int | None] = mapped_column(Integer)
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime)

    __table_args__ = (
        CheckConstraint("scope IN ('client', 'work_order')", name="scope"),
        CheckConstraint("issued >= 0", name="issued"),
        CheckConstraint("max_dacs IS NULL OR max_dacs >= 0", name="max_dacs"),
        CheckConstraint("rate IS NULL OR rate > 0", name="rate"),
        CheckConstraint("burst IS NULL OR burst >= 1", name="burst"),
    )


class ClientCert(Base):
    """A line host's TLS client certificate, as made by `gateway client add`, and its revocation."""

    __tablename__ = "client_certs"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    client: Mapped[str] = mapped_column(String(NAME_LEN))
    serial: Mapped[str] = mapped_column(String(SERIAL_LEN))
    sha256: Mapped[str] = mapped_column(String(SHA256_LEN))
    not_after: Mapped[datetime] = mapped_column(UtcDateTime)
    added_at: Mapped[datetime] = mapped_column(UtcDateTime)
    revoked_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    revocation_reason: Mapped[str | None] = mapped_column(Text)

    __table_args__ = (
        UniqueConstraint("sha256"),
        Index("ix_client_certs_serial", "serial"),
        Index("ix_client_certs_client", "client"),
    )


class AuditEntry(Base):
    """One append-only audit event, hash-chained per gateway (store.chain); never updated."""

    __tablename__ = "audit_log"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    line: Mapped[str] = mapped_column(String(NAME_LEN))  # the gateway's name: one chain each
    seq: Mapped[int] = mapped_column(BigInteger)
    at: Mapped[datetime] = mapped_column(UtcDateTime)
    entity: Mapped[str] = mapped_column(String(16))
    entity_id: Mapped[str] = mapped_column(String(64))
    event: Mapped[str] = mapped_column(String(32))
    data: Mapped[str] = mapped_column(Text)
    prev_hash: Mapped[str] = mapped_column(String(64))
    row_hash: Mapped[str] = mapped_column(String(64))

    __table_args__ = (
        CheckConstraint("entity IN ('issuance', 'quota', 'client')", name="entity"),
        UniqueConstraint("line", "seq"),
        Index("ix_audit_log_entity", "entity", "entity_id", "id"),
        Index("ix_audit_log_at", "at"),
    )


metadata = Base.metadata
issuances = metadata.tables["issuances"]
quotas = metadata.tables["quotas"]
client_certs = metadata.tables["client_certs"]
audit_log = metadata.tables["audit_log"]
