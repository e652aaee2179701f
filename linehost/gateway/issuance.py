"""Recording a group commit's DACs inside the gateway's serialised write transaction.

Under the write lock the batch reads, once, the live DACs of its UIDs and keys and the counters
it touches; it decides every enrollment again, in turn, on that view, which it keeps up to date
with what the enrollments before it recorded (one live DAC per UID and per key, as the partial
unique indexes insist; a counter never past its cap). Then it writes: one statement per counter
it moved (still guarded), one multi-row INSERT for the new DACs, one UPDATE per DAC it
supersedes that was recorded before. A batch's writes cost a handful of round trips whatever
its size: with PostgreSQL a round trip per DAC, inside the one serialised transaction, was
what bounded the gateway's DACs per second.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import insert, or_, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from linehost.errors import StoreError
from linehost.gateway.decision import (
    Decision,
    IssuanceRecord,
    QuotaRow,
    Scope,
    decide,
    quota_refusal,
    scopes,
)
from linehost.gateway.models import issuances, quotas
from linehost.gateway.queries import AuditEvent, issuance_record, quotas_of
from linehost.records import IssuedDac


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
class _Counter:
    row: QuotaRow  # as read in this transaction (issued 0, no cap, when it had no row)
    exists: bool
    added: int = 0

    def left(self) -> bool:
        return self.row.max_dacs is None or self.row.issued + self.added < self.row.max_dacs

    def now(self) -> QuotaRow:
        return dataclasses.replace(self.row, issued=self.row.issued + self.added)


@dataclass(slots=True)
class _Event:
    issuance_id: int  # a batch id (< 0) until the INSERT says the real one
    event: str
    data: Mapping[str, Any]


class Batch:
    """One group commit: `open` under the write lock, `decide` each enrollment in turn,
    `write` once."""

    def __init__(
        self,
        conn: AsyncConnection,
        now: datetime,
        live: list[IssuanceRecord],
        counters: dict[tuple[Scope, str], _Counter],
    ) -> None:
        """Use `Batch.open`."""
        self._conn = conn
        self._now = now
        self._by_uid = {r.uid: r for r in live}
        self._by_key = {r.public_key_sha256: r for r in live}
        self._counters = counters
        self._rows: list[dict[str, Any]] = []  # new DACs; batch id of row i is -(i + 1)
        self._events: list[_Event] = []

    @classmethod
    async def open(cls, conn: AsyncConnection, items: list[Pending], now: datetime) -> Batch:
        """Read the live DACs of `items`' UIDs and keys and their counters (two statements)."""
        uids = sorted({item.uid for item in items})
        keys = sorted({item.dac.public_key_sha256 for item in items})
        stmt = select(issuances).where(
            issuances.c.status == "issued",
            or_(issuances.c.uid.in_(uids), issuances.c.public_key_sha256.in_(keys)),
        )
        live = [issuance_record(row) for row in (await conn.execute(stmt)).mappings()]
        wanted = sorted({s for item in items for s in scopes(item.client, item.work_order)})
        rows = await quotas_of(conn, wanted)
        counters = {
            (scope, name): _Counter(
                rows.get((scope, name)) or QuotaRow(scope, name, None, 0, None, None),
                exists=(scope, name) in rows,
            )
            for scope, name in wanted
        }
        return cls(conn, now, live, counters)

    async def decide(self, item: Pending) -> Decision:
        """Decide `item` on what the database and the enrollments before it hold; for "issue",
        take it into the batch (counted, its superseded DAC marked)."""
        dac, client, uid = item.dac, item.client, item.uid
        key = dac.public_key_sha256
        by_key = self._by_key.get(key)
        decision = decide(
            self._by_uid.get(uid), by_key if by_key is not None and by_key.uid != uid else None,
            client=client, uid=uid, public_key_sha256=key,
            allow_reprovision=item.allow_reprovision,
        )  # fmt: skip
        if decision.kind != "issue":
            return decision
        counted = [self._counters[s] for s in scopes(client, item.work_order)]
        for counter in counted:
            if not counter.left():
                return quota_refusal(counter.now())
        for counter in counted:
            counter.added += 1
        old = decision.supersede
        if old is not None:
            await self._supersede(old, client)
        batch_id = -(len(self._rows) + 1)
        self._rows.append(
            {"client": client, "uid": uid, "work_order": item.work_order, "status": "issued",
             "public_key_sha256": key, "dac_serial": dac.serial_hex, "dac_sha256": dac.sha256,
             "dac_pem": dac.pem, "pai_sha256": dac.pai_sha256, "vid": dac.vid, "pid": dac.pid,
             "issued_at": self._now, "superseded_at": None}
        )  # fmt: skip
        record = IssuanceRecord(
            batch_id, client, uid, item.work_order, "issued", key,
            dac.serial_hex, dac.sha256, dac.pem, self._now,
        )  # fmt: skip
        self._by_uid[uid] = record
        self._by_key[key] = record
        self._events.append(
            _Event(batch_id, "dac_issued",
                   {"client": client, "uid": uid, "work_order": item.work_order,
                    "dac_serial": dac.serial_hex, "dac_sha256": dac.sha256,
                    "public_key_sha256": key, "pai_sha256": dac.pai_sha256,
                    "vid": dac.vid, "pid": dac.pid})
        )  # fmt: skip
        return Decision("issue", supersede=old)

    async def write(self, events: list[AuditEvent], decisions: list[Decision]) -> list[Decision]:
        """Write the counters and the new DACs, append the audit events to `events` in the
        order things happened; return `decisions` with every batch id made real."""
        for counter in self._counters.values():
            await self._count(counter)
        ids: dict[int, int] = {}
        if self._rows:
            # The ids come back matched by DAC serial (unique), not by row order: asking for
            # the order makes SQLAlchemy insert row by row on SQLite.
            stmt = insert(issuances).returning(issuances.c.id, issuances.c.dac_serial)
            result = await self._conn.execute(stmt, self._rows)
            by_serial = {str(row.dac_serial): int(row.id) for row in result}
            serials = [row["dac_serial"] for row in self._rows]
            if sorted(by_serial) != sorted(serials):
                raise StoreError(f"{len(serials)} DACs inserted, {len(by_serial)} ids returned")
            ids = {-(i + 1): by_serial[serial] for i, serial in enumerate(serials)}
        for ev in self._events:
            events.append(AuditEvent("issuance", str(ids.get(ev.issuance_id, ev.issuance_id)),
                                     ev.event, ev.data))  # fmt: skip
        return [_real(decision, ids) for decision in decisions]

    async def _supersede(self, old: IssuanceRecord, client: str) -> None:
        if old.id < 0:  # recorded earlier in this batch: it goes in as superseded
            row = self._rows[-old.id - 1]
            row["status"], row["superseded_at"] = "superseded", self._now
        else:  # before its UID's new DAC goes in: one live DAC per UID
            await self._conn.execute(
                update(issuances)
                .where(issuances.c.id == old.id, issuances.c.status == "issued")
                .values(status="superseded", superseded_at=self._now)
            )
        if self._by_uid.get(old.uid) is old:
            del self._by_uid[old.uid]
        if self._by_key.get(old.public_key_sha256) is old:
            del self._by_key[old.public_key_sha256]
        self._events.append(
            _Event(old.id, "dac_superseded",
                   {"uid": old.uid, "dac_serial": old.dac_serial, "by_client": client})
        )  # fmt: skip

    async def _count(self, counter: _Counter) -> None:
        if counter.added == 0:
            return
        row = counter.row
        if not counter.exists:
            await self._conn.execute(
                insert(quotas).values(
                    scope=row.scope, name=row.name, issued=counter.added, updated_at=self._now
                )
            )
            return
        # Guarded as ever: the view was read under the write lock, so this cannot miss; if it
        # ever did, the whole batch rolls back and nothing is sent.
        guarded = (
            update(quotas)
            .where(
                quotas.c.scope == row.scope,
                quotas.c.name == row.name,
                quotas.c.issued == row.issued,
                or_(
                    quotas.c.max_dacs.is_(None),
                    quotas.c.issued + counter.added <= quotas.c.max_dacs,
                ),
            )
            .values(issued=quotas.c.issued + counter.added, updated_at=self._now)
        )
        if (await self._conn.execute(guarded)).rowcount != 1:
            raise StoreError(f"{row.scope} {row.name}: counter moved under the write lock")


def _real(decision: Decision, ids: dict[int, int]) -> Decision:
    def fix(record: IssuanceRecord | None) -> IssuanceRecord | None:
        if record is None or record.id >= 0:
            return record
        return dataclasses.replace(record, id=ids[record.id])

    return dataclasses.replace(
        decision, existing=fix(decision.existing), supersede=fix(decision.supersede)
    )
