"""The unit of work of one group commit: batch-wide loads, the rows in memory, and a flush
that holds every write statement (a few executemany per batch)."""

from __future__ import annotations

import hashlib
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Final

from sqlalchemy import ColumnElement, and_, any_, bindparam, exists, insert, or_, select, update
from sqlalchemy.dialects import postgresql
from sqlalchemy.ext.asyncio import AsyncConnection

from linehost.protocol.outcomes import LIVE_STATUSES, AssignmentStatus, Outcome
from linehost.records import AttemptStart, OnboardingRequest, iso_utc
from linehost.store import pgflush
from linehost.store.chain import GENESIS_HASH, CommittedRow, canonical_json, row_body
from linehost.store.models import (
    assignments,
    attempts,
    audit_log,
    outbox,
    revocations,
    work_orders,
)
from linehost.store.onboarding import OnboardingBook
from linehost.store.rows import ATTEMPT_COLUMNS, AssignmentRow, AttemptRow

RESULTS_TOPIC: Final = "results"

#: Builds the results message of one contract attempt record (the app wires
#: `linehost.mqtt.payloads.result_payload`): the store writes it to the outbox in the attempt's
#: own transaction without knowing what a message looks like.
ResultPayload = Callable[[Mapping[str, Any]], str]

ChainHead = tuple[int, str]  # (seq, row_hash) of the newest audit row of this line

_LIVE = [s.value for s in LIVE_STATUSES]


@dataclass(slots=True)
class Wants:
    attempt_ids: set[str] = field(default_factory=set)
    assignment_ids: set[int] = field(default_factory=set)
    keys: set[str] = field(default_factory=set)
    uids: set[str] = field(default_factory=set)
    running_line: str | None = None
    work_orders: set[str] = field(default_factory=set)
    onboarding_uids: set[str] = field(default_factory=set)
    onboarding: list[OnboardingRequest] = field(default_factory=list)


@dataclass(slots=True)
class AuditEvent:
    entity: str
    entity_id: str
    event: str
    data: dict[str, Any]


class Batch:
    """The rows one transaction touches, their changes, and what it appends."""

    def __init__(
        self,
        line: str,
        now: datetime,
        *,
        result_payload: ResultPayload,
        single_statement: bool = False,
    ) -> None:
        """A batch of `line` dated `now`, whose ended attempts go to the outbox as
        `result_payload` makes them; `single_statement` (PostgreSQL): read with one statement
        and write with one (pgflush) where the batch allows."""
        self.line = line
        self.now = now
        self.result_payload = result_payload
        self.single_statement = single_statement
        self.attempts: dict[str, AttemptRow] = {}
        self.new_attempts: list[AttemptRow] = []
        self.running: list[AttemptRow] = []
        self.assignments: dict[int, AssignmentRow] = {}
        self.new_assignments: list[AssignmentRow] = []
        self._by_key: defaultdict[str, list[AssignmentRow]] = defaultdict(list)
        self._by_uid: defaultdict[str, list[AssignmentRow]] = defaultdict(list)
        self.events: list[AuditEvent] = []
        self.audit_written: list[CommittedRow] = []  # the audit rows flush wrote
        self.results: list[str] = []
        self.sent: list[tuple[list[int], datetime]] = []
        self.work_orders: dict[str, tuple[int, int]] = {}  # id -> (quantity, claimed)
        self.closed_work_orders: dict[str, datetime] = {}  # id -> closed_at
        self.work_order_changes: list[dict[str, Any]] = []  # opened (no claimed) / closed
        self.slots: defaultdict[str, int] = defaultdict(int)  # id -> slots taken (+) / freed (-)
        self.onboarding = OnboardingBook(now)
        self.revoked: set[str] = set()  # serials of loaded assignments whose DAC is revoked

    async def load(self, conn: AsyncConnection, wants: Wants) -> None:
        one_of = _one_of_for(conn)
        if wants.work_orders:
            t = work_orders
            stmt = select(t.c.id, t.c.quantity, t.c.claimed, t.c.closed_at).where(
                one_of(t.c.id, wants.work_orders)
            )
            for row in await _fetch(conn, stmt):
                self.work_orders[row.id] = (int(row.quantity), int(row.claimed))
                if row.closed_at is not None:
                    self.closed_work_orders[row.id] = row.closed_at
        await self.onboarding.load(conn, wants.onboarding_uids, wants.onboarding)
        if self.single_statement and conn.dialect.name == "postgresql":
            await pgflush.load(self, conn, wants)
            return
        assignment_ids = set(wants.assignment_ids)
        if wants.attempt_ids or wants.running_line is not None:
            clauses: list[ColumnElement[bool]] = []
            if wants.attempt_ids:
                clauses.append(one_of(attempts.c.attempt_id, wants.attempt_ids))
            if wants.running_line is not None:
                clauses.append(
                    and_(attempts.c.line == wants.running_line, attempts.c.outcome.is_(None))
                )
            cols = [attempts.c[k] for k in ATTEMPT_COLUMNS]
            for row in await _fetch(conn, select(*cols).where(or_(*clauses))):
                attempt = AttemptRow.from_db(row)
                self.found_attempt(attempt, wants.running_line)
                if attempt.assignment_id is not None:
                    assignment_ids.add(attempt.assignment_id)
            self.running.sort(key=lambda a: (a.started_at, a.attempt_id))
        if not (assignment_ids or wants.keys or wants.uids):
            return
        where: list[ColumnElement[bool]] = []
        if assignment_ids:
            where.append(one_of(assignments.c.id, assignment_ids))
        if wants.keys or wants.uids:
            where.append(
                and_(
                    assignments.c.status.in_(_LIVE),
                    or_(
                        one_of(assignments.c.public_key_sha256, wants.keys),
                        one_of(assignments.c.uid, wants.uids),
                    ),
                )
            )
        # FOR UPDATE (PostgreSQL): another host cannot change them before we commit.
        revoked = exists().where(revocations.c.dac_serial == assignments.c.dac_serial)
        stmt = (
            select(assignments, revoked.label("revoked"))
            .where(or_(*where))
            .order_by(assignments.c.id)
            .with_for_update(of=assignments)
        )
        for row in await _fetch(conn, stmt):
            self.found_assignment(AssignmentRow.from_db(row), revoked=row.revoked)

    def found_attempt(self, attempt: AttemptRow, running_line: str | None) -> None:
        """Take a stored attempt the load found."""
        self.attempts[attempt.attempt_id] = attempt
        if attempt.outcome is None and attempt.line == running_line:
            self.running.append(attempt)

    def found_assignment(self, row: AssignmentRow, *, revoked: bool) -> None:
        """Take a stored (and locked) assignment the load found."""
        self._index(row)
        if revoked:
            self.revoked.add(row.dac_serial)

    def _index(self, row: AssignmentRow) -> None:
        if row.id is not None:
            self.assignments[row.id] = row
        self._by_key[row.public_key_sha256].append(row)
        self._by_uid[row.uid].append(row)

    def sharing(self, key: str, uid: str) -> list[AssignmentRow]:
        """Known assignments with this key or this UID (live ones are all known)."""
        rows = list(self._by_key.get(key, ()))
        rows.extend(r for r in self._by_uid.get(uid, ()) if r.public_key_sha256 != key)
        return rows

    def add_assignment(self, row: AssignmentRow) -> None:
        self.new_assignments.append(row)
        self._index(row)

    def add_attempt(self, row: AttemptRow) -> None:
        self.attempts[row.attempt_id] = row
        self.new_attempts.append(row)

    def audit(self, entity: str, entity_id: str, event: str, data: dict[str, Any]) -> None:
        self.events.append(AuditEvent(entity, entity_id, event, data))

    def open_work_order(self, work_order: str, quantity: int) -> None:
        """Insert a new work order at flush (the caller checked it is not there)."""
        self.work_orders[work_order] = (quantity, 0)
        self.work_order_changes.append({"id": work_order, "quantity": quantity})

    def close_work_order(self, work_order: str, by: str) -> None:
        """Close the work order at flush (a guarded UPDATE): it takes no more devices."""
        self.closed_work_orders[work_order] = self.now
        self.work_order_changes.append({"id": work_order, "closed_by": by})

    def claim_slot(self, work_order: str) -> None:
        """Take one slot of the work order (a guarded UPDATE at flush; unknown: unlimited)."""
        self.slots[work_order] += 1

    def set_status(
        self,
        row: AssignmentRow,
        status: AssignmentStatus,
        attempt_id: str,
        *,
        confirmed_at: datetime | None = None,
    ) -> None:
        previous = row.status
        leaves_live = previous in LIVE_STATUSES and status not in LIVE_STATUSES
        if row.work_order is not None and leaves_live:
            self.slots[row.work_order] -= 1  # a failed or superseded DAC frees its slot
        values: dict[str, Any] = {"status": status, "updated_at": self.now}
        if status is AssignmentStatus.CONFIRMED:
            values["confirmed_at"] = confirmed_at or self.now
        row.set(**values)
        self.audit_assignment(
            row, f"assignment_{status.value}", attempt_id, previous=previous.value
        )

    def audit_assignment(
        self, row: AssignmentRow, event: str, attempt_id: str, **extra: Any
    ) -> None:
        data = {
            "uid": row.uid,
            "status": row.status.value,
            "dac_sha256": row.dac_sha256,
            "public_key_sha256": row.public_key_sha256,
            "attempt_id": attempt_id,
            **extra,
        }
        self.audit("assignment", row.dac_serial, event, data)

    def start_attempt(self, start: AttemptStart) -> AttemptRow:
        row = AttemptRow.begin(start)
        self.add_attempt(row)
        self.audit(
            "attempt",
            row.attempt_id,
            "attempt_started",
            {
                "uid": row.uid,
                "station": row.station,
                "jig": row.jig,
                "work_order": row.work_order,
                "started_at": iso_utc(row.started_at),
                "key_proof": row.key_proof,
            },
        )
        return row

    def end_attempt(self, row: AttemptRow, **values: Any) -> None:
        row.set(**values)
        data = {
            "uid": row.uid,
            "outcome": row.outcome,
            "detail": row.detail,
            "device_code": row.device_code,
            "dac_serial": row.dac_serial,
            "ended_at": iso_utc(row.ended_at),
        }
        if row.attest_nonce is not None:  # the attestation evidence joins the audit chain
            data |= {"attest_nonce": row.attest_nonce, "attest_signature": row.attest_signature}
        self.audit("attempt", row.attempt_id, "attempt_ended", data)
        # The outbox keeps the results message, ready to publish; the relay sends it as it is.
        self.results.append(self.result_payload(row.record()))

    async def flush(self, conn: AsyncConnection, head: ChainHead | None) -> ChainHead | None:
        """Write every change; returns the new chain head.

        On PostgreSQL (`single_statement`) one data-modifying statement carries the writes
        (pgflush); SQLite, and the batches pgflush does not take, use one statement per table.
        """
        pg = conn.dialect.name == "postgresql"
        if self.single_statement and pg and pgflush.fits(self):
            return await pgflush.flush(self, conn, head, topic=RESULTS_TOPIC)
        await self.write_work_orders(conn)
        # Existing assignments first: they only ever leave the live set, which frees
        # the key / UID for a new assignment inserted below.
        await self.update_assignments(conn)
        if self.new_assignments:
            # Ids come back in any order (one multi-row INSERT): match them by the unique serial.
            stmt = insert(assignments).returning(assignments.c.id, assignments.c.dac_serial)
            result = await conn.execute(stmt, [r.insert_params() for r in self.new_assignments])
            by_serial = {serial: new_id for new_id, serial in result.all()}
            for row in self.new_assignments:
                row.id = by_serial[row.dac_serial]
        await self.onboarding.flush(conn)
        if self.new_attempts:
            await conn.execute(insert(attempts), [a.insert_params() for a in self.new_attempts])
        existing = (a for a in self.attempts.values() if not a.is_new)
        await _update_changed(conn, attempts, attempts.c.attempt_id, existing)
        head = await self._append_audit(conn, head)
        if self.results:
            await conn.execute(
                insert(outbox),
                [
                    {
                        "line": self.line,
                        "topic": RESULTS_TOPIC,
                        "payload": payload,
                        "created_at": self.now,
                        "sent_at": None,
                    }
                    for payload in self.results
                ],
            )
        for ids, at in self.sent:
            await conn.execute(
                update(outbox)
                .where(outbox.c.line == self.line, outbox.c.id.in_(ids), outbox.c.sent_at.is_(None))
                .values(sent_at=at)
            )
        return head

    async def write_work_orders(self, conn: AsyncConnection) -> None:
        """Work orders opened, this batch's slot claims, work orders closed: in that order."""
        await self._change_work_orders(conn, opened=True)  # before the claims on them
        await self.move_slots(conn)
        await self._change_work_orders(conn, opened=False)  # after this batch's claims

    async def update_assignments(self, conn: AsyncConnection) -> None:
        """UPDATE the changed columns of the assignments already stored."""
        await _update_changed(conn, assignments, assignments.c.id, self.assignments.values())

    async def move_slots(self, conn: AsyncConnection) -> None:
        """Apply the work-order slot changes; a claim is guarded and must hit its row."""
        t = work_orders
        for work_order, delta in sorted(self.slots.items()):
            if delta == 0 or (delta > 0 and work_order not in self.work_orders):
                continue
            stmt = update(t).where(t.c.id == work_order).values(claimed=t.c.claimed + delta)
            if delta > 0:
                # A work order closed by another host since our read takes no claim either.
                stmt = stmt.where(t.c.claimed + delta <= t.c.quantity, t.c.closed_at.is_(None))
            else:
                stmt = stmt.where(t.c.claimed + delta >= 0)
            result = await conn.execute(stmt)
            if delta > 0 and result.rowcount != 1:
                raise SlotRace(work_order)

    async def _change_work_orders(self, conn: AsyncConnection, *, opened: bool) -> None:
        """Insert the work orders opened (`opened`) or close the ones closed in this batch."""
        t = work_orders
        for change in self.work_order_changes:
            if ("quantity" in change) is not opened:
                continue
            if opened:
                await conn.execute(
                    insert(t).values(
                        id=change["id"], quantity=change["quantity"], claimed=0,
                        created_at=self.now,
                    )
                )  # fmt: skip
                continue
            stmt = (
                update(t)
                .where(t.c.id == change["id"], t.c.closed_at.is_(None))
                .values(closed_at=self.now, closed_by=change["closed_by"])
            )
            if (await conn.execute(stmt)).rowcount != 1:
                raise SlotRace(change["id"])  # closed by another host since our read

    async def _append_audit(
        self, conn: AsyncConnection, head: ChainHead | None
    ) -> ChainHead | None:
        rows, head = self.audit_rows(head)
        if rows:
            await conn.execute(insert(audit_log), rows)
        return head

    def audit_rows(self, head: ChainHead | None) -> tuple[list[dict[str, Any]], ChainHead | None]:
        """The audit rows of this batch's events, chained on from `head`, and the new head."""
        if not self.events:
            return [], head
        seq, prev = head if head is not None else (0, GENESIS_HASH)
        at = iso_utc(self.now)
        assert at is not None
        rows = []
        written = []
        for ev in self.events:
            seq += 1
            data_json = canonical_json(ev.data)
            body = row_body(
                seq=seq, line=self.line, at=at, entity=ev.entity, entity_id=ev.entity_id,
                event=ev.event, data_json=data_json,
            )  # fmt: skip
            digest = hashlib.sha256((prev + body).encode()).hexdigest()
            written.append(CommittedRow(self.line, seq, prev, digest, body))
            rows.append(
                {
                    "line": self.line,
                    "seq": seq,
                    "at": self.now,
                    "entity": ev.entity,
                    "entity_id": ev.entity_id,
                    "event": ev.event,
                    "data": data_json,
                    "prev_hash": prev,
                    "row_hash": digest,
                }
            )
            prev = digest
        self.audit_written = written
        return rows, (seq, prev)


def _one_of_for(conn: AsyncConnection) -> Callable[[Any, Iterable[Any]], ColumnElement[bool]]:
    """`column IN (values)` as the connection's database likes it best.

    On PostgreSQL `column = ANY($1)` with one array parameter: the same SQL text for any number
    of values, so one prepared statement serves every batch (an IN list of a new length is a
    new statement: a prepare round trip and server CPU each time).
    """
    if conn.dialect.name != "postgresql":
        return lambda column, values: column.in_(list(values))

    def any_of(column: Any, values: Iterable[Any]) -> ColumnElement[bool]:
        array = bindparam(None, list(values), type_=postgresql.ARRAY(column.type))
        match: ColumnElement[bool] = column == any_(array)
        return match

    return any_of


async def _fetch(conn: AsyncConnection, stmt: Any) -> Sequence[Any]:
    return (await conn.execute(stmt)).all()


async def _update_changed(
    conn: AsyncConnection, table: Any, key: Any, rows: Iterable[AssignmentRow | AttemptRow]
) -> None:
    """UPDATE each row's changed columns: one executemany per set of columns."""
    groups: defaultdict[tuple[str, ...], list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        if not row.changes:
            continue
        cols = tuple(sorted(row.changes))
        params = {f"p_{c}": _plain(v) for c, v in row.changes.items()}
        params["p_key"] = getattr(row, key.name)
        groups[cols].append(params)
    for cols, params_list in groups.items():
        stmt = (
            update(table)
            .where(key == bindparam("p_key"))
            .values({c: bindparam(f"p_{c}", type_=table.c[c].type) for c in cols})
        )
        await conn.execute(stmt, params_list)


def _plain(value: Any) -> Any:
    return value.value if isinstance(value, AssignmentStatus | Outcome) else value


async def load_head(conn: AsyncConnection, line: str) -> ChainHead | None:
    stmt = (
        select(audit_log.c.seq, audit_log.c.row_hash)
        .where(audit_log.c.line == line)
        .order_by(audit_log.c.seq.desc())
        .limit(1)
    )
    row = (await conn.execute(stmt)).first()
    return None if row is None else (int(row.seq), str(row.row_hash))


class SlotRace(Exception):
    """A guarded work-order claim hit no row: another host took the slot since our read."""
