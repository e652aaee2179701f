"""Recording one DAC inside the gateway's serialised write transaction: decide again on what is
in the database now, bump the guarded counters, mark a superseded DAC, insert the issuance and
collect its audit events."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from sqlalchemy import insert, or_, update
from sqlalchemy.ext.asyncio import AsyncConnection

from linehost.gateway.decision import Decision, Scope, decide, quota_refusal, scopes
from linehost.gateway.models import issuances, quotas
from linehost.gateway.queries import AuditEvent, ensure_quota, live, quota
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


async def record_one(conn: AsyncConnection, events: list[AuditEvent], item: Pending) -> Decision:
    """Decide `item` again and, for "issue", record it and count it (in `conn`'s transaction)."""
    dac, client, uid, work_order = item.dac, item.client, item.uid, item.work_order
    by_uid, by_key = await live(conn, uid, dac.public_key_sha256)
    decision = decide(
        by_uid, by_key, client=client, uid=uid,
        public_key_sha256=dac.public_key_sha256, allow_reprovision=item.allow_reprovision,
    )  # fmt: skip
    if decision.kind != "issue":
        return decision
    now = utcnow()
    counted: list[tuple[Scope, str]] = []
    for scope, name in scopes(client, work_order):
        await ensure_quota(conn, scope, name, now)
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
