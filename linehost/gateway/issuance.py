"""Recording DACs inside the gateway's serialised write transaction: decide each again on what
the database holds now (the batch's view of it), bump the guarded counters, mark a superseded
DAC, insert the issuance and collect its audit events."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from sqlalchemy import insert, or_, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from linehost.gateway.decision import (
    Decision,
    IssuanceRecord,
    Scope,
    decide,
    quota_refusal,
    scopes,
)
from linehost.gateway.models import issuances, quotas
from linehost.gateway.queries import AuditEvent, ensure_quota, issuance_record, quota
from linehost.records import IssuedDac, utcnow


@dataclass(slots=True)
class Pending:
    """A signed DAC waiting for the next group commit; `future` gets its decision."""

    dac: IssuedDac
    client: str
    uid: str
    work_order: str | None
    allow_reprovision: bool
    future: asyncio.Future[Decision] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )


@dataclass(slots=True)
class BatchView:
    """What one write transaction knows of the database: the live DAC of each UID and of each
    key its batch asks about (read once, under the write lock, then kept up to date by every
    DAC the batch records or supersedes: one live DAC per UID and per key, as the partial
    unique indexes insist), and the counters it has made sure exist."""

    by_uid: dict[str, IssuanceRecord]
    by_key: dict[str, IssuanceRecord]
    counters: set[tuple[Scope, str]] = field(default_factory=set)

    @classmethod
    async def load(cls, conn: AsyncConnection, batch: list[Pending]) -> BatchView:
        """The live DACs of `batch`'s UIDs and keys, in one statement."""
        uids = sorted({item.uid for item in batch})
        keys = sorted({item.dac.public_key_sha256 for item in batch})
        stmt = select(issuances).where(
            issuances.c.status == "issued",
            or_(issuances.c.uid.in_(uids), issuances.c.public_key_sha256.in_(keys)),
        )
        records = [issuance_record(row) for row in (await conn.execute(stmt)).mappings()]
        return cls({r.uid: r for r in records}, {r.public_key_sha256: r for r in records})

    def live(
        self, uid: str, public_key_sha256: str
    ) -> tuple[IssuanceRecord | None, IssuanceRecord | None]:
        """As queries.live: the live DAC of `uid`, and of the key for another UID."""
        by_key = self.by_key.get(public_key_sha256)
        return self.by_uid.get(uid), by_key if by_key is not None and by_key.uid != uid else None

    def retire(self, record: IssuanceRecord) -> None:
        """`record` was superseded: no longer live."""
        if self.by_uid.get(record.uid) is record:
            del self.by_uid[record.uid]
        if self.by_key.get(record.public_key_sha256) is record:
            del self.by_key[record.public_key_sha256]

    def add(self, record: IssuanceRecord) -> None:
        """`record` was recorded live."""
        self.by_uid[record.uid] = record
        self.by_key[record.public_key_sha256] = record


async def record_one(
    conn: AsyncConnection, events: list[AuditEvent], item: Pending, view: BatchView
) -> Decision:
    """Decide `item` again on `view` and, for "issue", record it and count it (in `conn`'s
    transaction), keeping `view` up to date."""
    dac, client, uid, work_order = item.dac, item.client, item.uid, item.work_order
    by_uid, by_key = view.live(uid, dac.public_key_sha256)
    decision = decide(
        by_uid, by_key, client=client, uid=uid,
        public_key_sha256=dac.public_key_sha256, allow_reprovision=item.allow_reprovision,
    )  # fmt: skip
    if decision.kind != "issue":
        return decision
    now = utcnow()
    counted: list[tuple[Scope, str]] = []
    for scope, name in scopes(client, work_order):
        if (scope, name) not in view.counters:
            await ensure_quota(conn, scope, name, now)
            view.counters.add((scope, name))
        guarded = (
            update(quotas)
            .where(
                quotas.c.scope == scope,
                quotas.c.name == name,
                or_(quotas.c.max_dacs.is_(None), quotas.c.issued < quotas.c.max_dacs),
            )
            .values(issued=quotas.c.issued + 1, updated_at=now)
        )
        if (await conn.execute(guarded)).rowcount != 1:
            for done_scope, done_name in counted:  # give back what this one took
                await conn.execute(
                    update(quotas)
                    .where(quotas.c.scope == done_scope, quotas.c.name == done_name)
                    .values(issued=quotas.c.issued - 1)
                )
            row = await quota(conn, scope, name)
            assert row is not None
            return quota_refusal(row)
        counted.append((scope, name))
    if decision.supersede is not None:
        old = decision.supersede
        await conn.execute(
            update(issuances)
            .where(issuances.c.id == old.id, issuances.c.status == "issued")
            .values(status="superseded", superseded_at=now)
        )
        view.retire(old)
        events.append(
            AuditEvent("issuance", str(old.id), "dac_superseded",
                       {"uid": uid, "dac_serial": old.dac_serial, "by_client": client})
        )  # fmt: skip
    result = await conn.execute(
        insert(issuances).values(
            client=client,
            uid=uid,
            work_order=work_order,
            status="issued",
            public_key_sha256=dac.public_key_sha256,
            dac_serial=dac.serial_hex,
            dac_sha256=dac.sha256,
            dac_pem=dac.pem,
            pai_sha256=dac.pai_sha256,
            vid=dac.vid,
            pid=dac.pid,
            issued_at=now,
        )
    )
    key = result.inserted_primary_key
    assert key is not None
    new_id = int(key[0])
    view.add(
        IssuanceRecord(
            id=new_id,
            client=client,
            uid=uid,
            work_order=work_order,
            status="issued",
            public_key_sha256=dac.public_key_sha256,
            dac_serial=dac.serial_hex,
            dac_sha256=dac.sha256,
            dac_pem=dac.pem,
            issued_at=now,
        )
    )
    events.append(
        AuditEvent(
            "issuance",
            str(new_id),
            "dac_issued",
            {
                "client": client,
                "uid": uid,
                "work_order": work_order,
                "dac_serial": dac.serial_hex,
                "dac_sha256": dac.sha256,
                "public_key_sha256": dac.public_key_sha256,
                "pai_sha256": dac.pai_sha256,
                "vid": dac.vid,
                "pid": dac.pid,
            },
        )
    )
    return Decision("issue", supersede=decision.supersede)
