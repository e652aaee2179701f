"""The gateway's SQL reads on an open connection, the rows they map to, and the audit events a
write transaction collects."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import and_, func, or_, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import RowMapping
from sqlalchemy.ext.asyncio import AsyncConnection

from linehost.gateway.decision import IssuanceRecord, QuotaRow, Scope
from linehost.gateway.models import client_certs, issuances, quotas


@dataclass(slots=True)
class AuditEvent:
    """One audit row to append when the transaction that made it commits."""

    entity: str
    entity_id: str
    event: str
    data: Mapping[str, Any] = field(default_factory=dict)


async def live(
    conn: AsyncConnection, uid: str, public_key_sha256: str
) -> tuple[IssuanceRecord | None, IssuanceRecord | None]:
    """The live DAC of `uid` and the live DAC of the key for another UID (either None)."""
    stmt = select(issuances).where(
        issuances.c.status == "issued",
        or_(issuances.c.uid == uid, issuances.c.public_key_sha256 == public_key_sha256),
    )
    by_uid = by_key = None
    for row in (await conn.execute(stmt)).mappings():
        record = issuance_record(row)
        if record.uid == uid:
            by_uid = record
        if record.public_key_sha256 == public_key_sha256 and record.uid != uid:
            by_key = record
    return by_uid, by_key


async def quota(conn: AsyncConnection, scope: Scope, name: str) -> QuotaRow | None:
    """The counter of `name`, or None when it has no row."""
    stmt = select(quotas).where(and_(quotas.c.scope == scope, quotas.c.name == name))
    row = (await conn.execute(stmt)).mappings().first()
    return None if row is None else quota_row(row)


async def quotas_of(
    conn: AsyncConnection, wanted: list[tuple[Scope, str]]
) -> dict[tuple[Scope, str], QuotaRow]:
    """The counters of `wanted` that have a row, in one statement."""
    stmt = select(quotas).where(
        or_(*(and_(quotas.c.scope == scope, quotas.c.name == name) for scope, name in wanted))
    )
    rows = (quota_row(row) for row in (await conn.execute(stmt)).mappings())
    return {(row.scope, row.name): row for row in rows}


async def is_revoked(conn: AsyncConnection, cert_sha256: str) -> bool:
    """True when the client certificate with this sha256 was revoked."""
    stmt = select(func.count()).where(
        client_certs.c.sha256 == cert_sha256, client_certs.c.revoked_at.is_not(None)
    )
    return int((await conn.execute(stmt)).scalar_one()) > 0


async def ensure_quota(conn: AsyncConnection, scope: Scope, name: str, now: datetime) -> None:
    """Make the counter's row (0 issued, no cap) unless it exists."""
    values = {"scope": scope, "name": name, "issued": 0, "updated_at": now}
    if conn.dialect.name == "postgresql":
        stmt: Any = postgresql.insert(quotas).values(values).on_conflict_do_nothing()
    else:
        stmt = sqlite.insert(quotas).values(values).on_conflict_do_nothing()
    await conn.execute(stmt)


def issuance_record(row: RowMapping) -> IssuanceRecord:
    """An `issuances` row as a record."""
    return IssuanceRecord(
        id=int(row["id"]),
        client=row["client"],
        uid=row["uid"],
        work_order=row["work_order"],
        status=row["status"],
        public_key_sha256=row["public_key_sha256"],
        dac_serial=row["dac_serial"],
        dac_sha256=row["dac_sha256"],
        dac_pem=row["dac_pem"],
        issued_at=row["issued_at"],
    )


def quota_row(row: RowMapping) -> QuotaRow:
    """A `quotas` row as a counter."""
    return QuotaRow(
        scope=row["scope"],
        name=row["name"],
        max_dacs=row["max_dacs"],
        issued=int(row["issued"]),
        rate=row["rate"],
        burst=row["burst"],
    )


def limits(row: QuotaRow | None) -> dict[str, Any] | None:
    """A counter's settings and count for an audit event."""
    if row is None:
        return None
    return {"max_dacs": row.max_dacs, "issued": row.issued, "rate": row.rate, "burst": row.burst}


def sha256_hex(data: bytes) -> str:
    """Lower-case hex sha256."""
    return hashlib.sha256(data).hexdigest()
