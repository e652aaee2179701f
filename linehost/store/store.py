"""The Store: the line's only way to the database; every call returns after a durable commit.

Calls from all jigs go to one writer task. It takes everything queued, applies it in order in one
transaction over an in-memory view of the rows involved (read with a few batch-wide SELECTs),
writes the changes with a few executemany statements, commits once (group commit), and only
then answers each caller. The writer alone extends this line's audit hash chain.
"""

from __future__ import annotations

import asyncio
import json
from abc import ABC, abstractmethod
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final, Generic, TypeVar

import structlog
from sqlalchemy import ColumnElement, and_, any_, bindparam, insert, or_, select, update
from sqlalchemy.dialects import postgresql
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from linehost.errors import DacCollision, LinehostError, OnboardingCollision, StoreError
from linehost.protocol.outcomes import LIVE_STATUSES, AssignmentStatus, Outcome
from linehost.records import (
    AssignRequest,
    AssignResult,
    AttemptEnd,
    AttemptStart,
    OnboardingRecord,
    OnboardingRequest,
    attempt_record,
    iso_utc,
)
from linehost.store.audit import Audit
from linehost.store.chain import GENESIS_HASH, canonical_json, row_hash_of_json
from linehost.store.decisions import (
    AssignDecision,
    LiveAssignment,
    decide_assign,
    next_assignment_status,
)
from linehost.store.engine import (
    WRITE_TRANSACTION,
    create_engine,
    is_unavailable,
    safe_url,
    translate_error,
)
from linehost.store.migrate import schema_is_current, upgrade_to_head
from linehost.store.models import (
    NAME_LEN,
    assignments,
    attempts,
    audit_log,
    outbox,
    work_orders,
)
from linehost.store.onboarding import OnboardingBook, OnboardingRow

MAX_BATCH: Final = 256  # operations per group commit
SINGLE_OP_TRIES: Final = 3  # after a failed batch, tries per operation on its own
RESULTS_TOPIC: Final = "results"
INTERRUPTED_DETAIL: Final = "host stopped during attempt"

_log = structlog.get_logger("linehost.store")

T = TypeVar("T")
ChainHead = tuple[int, str]  # (seq, row_hash) of the newest audit row of this line

_LIVE = [s.value for s in LIVE_STATUSES]
_REJECT_OUTCOMES = (Outcome.DUPLICATE_KEY, Outcome.ALREADY_PROVISIONED, Outcome.ISSUER_ERROR)
#: The detail of an attempt refused because its work order has no slot left (issue 8).
WORK_ORDER_COMPLETE: Final = "work order complete"


def utcnow() -> datetime:
    """The current time, timezone-aware UTC."""
    return datetime.now(UTC)


class Store:
    """Attempts, assignments, audit trail and outbox of one line, behind a group-commit writer."""

    def __init__(
        self,
        engine: AsyncEngine,
        *,
        line: str,
        head: ChainHead | None,
        write_engine: AsyncEngine | None = None,
    ) -> None:
        """Serve `line`: reads over `engine`, the writer's transactions over `write_engine`
        (default: the same engine)."""
        self.line = line
        self.reconnects = 0  # batches run again on a new connection after a dead one
        self._engine = engine
        self._write_engine = write_engine or engine
        self._head = head
        self._head_stale = False
        self._clock: Callable[[], datetime] = utcnow
        self._queue: asyncio.Queue[_Op[Any] | None] = asyncio.Queue()
        self._closed = False  # close() was called
        self._accepting = True  # new operations are taken
        self._writer = asyncio.create_task(self._write_loop(), name=f"store-writer-{line}")

    @classmethod
    async def open(cls, url: str, *, line: str, auto_migrate: bool = True) -> Store:
        """Connect, bring the schema to head (or insist it is there) and start the writer."""
        if not line or len(line) > NAME_LEN:
            raise StoreError(f"line name must be 1..{NAME_LEN} characters, got {line!r}")
        engine = create_engine(url)
        try:
            if auto_migrate:
                await upgrade_to_head(engine)
            elif not await schema_is_current(engine):
                raise StoreError(
                    f"database {safe_url(engine)} is not at the current schema: "
                    "run `linehost db upgrade`"
                )
            try:
                async with engine.connect() as conn:
                    head = await _load_head(conn, line)
            except Exception as exc:
                raise translate_error(exc, engine) from exc
        except BaseException:
            await engine.dispose()
            raise
        return cls(engine, line=line, head=head, write_engine=create_engine(url, ping=False))

    async def close(self) -> None:
        """Finish what is queued, stop the writer, release the connections."""
        if self._closed:
            return
        self._closed = True
        self._accepting = False
        self._queue.put_nowait(None)
        try:
            await asyncio.wait([self._writer])  # its end, without its cancellation
        finally:
            if self._write_engine is not self._engine:
                await self._write_engine.dispose()
            await self._engine.dispose()

    @property
    def engine(self) -> AsyncEngine:
        """The engine, for read-only queries (audit, tests)."""
        return self._engine

    def audit(self) -> Audit:
        """Read-only audit queries over this store's database."""
        return Audit(self._engine)

    async def recover_interrupted(self, now: datetime) -> int:
        """End this line's attempts left running by an earlier process as `disconnected`;
        their `issued` assignments become `unknown`. Returns how many were ended."""
        _require_aware(now, "now")
        return await self._submit(_RecoverOp(self.line, now))

    async def open_work_order(self, work_order: str, quantity: int) -> None:
        """Create the work order, or check that the database has the same quantity for it."""
        t = work_orders
        for _ in range(2):
            try:
                async with self._engine.begin() as conn:
                    row = (
                        await conn.execute(select(t.c.quantity).where(t.c.id == work_order))
                    ).first()
                    if row is None:
                        await conn.execute(
                            insert(t).values(
                                id=work_order, quantity=quantity, claimed=0, created_at=utcnow()
                            )
                        )
                        return
            except IntegrityError:
                continue  # another host created it at the same moment: read it again
            except Exception as exc:
                raise translate_error(exc, self._engine) from exc
            if int(row.quantity) != quantity:
                raise StoreError(
                    f"work order {work_order} has quantity {row.quantity} in the database, "
                    f"the config says {quantity}"
                )
            return
        raise StoreError(f"work order {work_order}: could not be created")

    async def assign(self, req: AssignRequest) -> AssignResult:
        """Decide and durably record which DAC (if any) this attempt's device gets.

        Idempotent per attempt_id: a retry returns the recorded result, whatever its candidate.
        Raises DacCollision when the candidate's serial or fingerprint is already taken.
        """
        start = req.attempt
        self._check_start(start)
        if start.uid is None:
            raise ValueError("assign needs the device UID")
        if req.candidate.public_key_sha256 != req.public_key_sha256:
            raise ValueError("the candidate DAC is not for the CSR's public key")
        return await self._submit(_AssignOp(req))

    async def end_attempt(self, start: AttemptStart, end: AttemptEnd) -> None:
        """Record how an attempt ended, its assignment's new status and its results message.

        Idempotent: an attempt that is already ended is left as it is.
        """
        self._check_start(start)
        _require_aware(end.ended_at, "ended_at")
        Outcome(end.outcome)
        if end.assignment_status is not None:
            next_assignment_status(AssignmentStatus.ISSUED, AssignmentStatus(end.assignment_status))
        await self._submit(_EndOp(start, end))

    async def pending_results(self, limit: int) -> list[tuple[int, str]]:
        """Up to `limit` unsent results messages of this line, oldest first: (id, payload)."""
        stmt = (
            select(outbox.c.id, outbox.c.payload)
            .where(
                outbox.c.line == self.line,
                outbox.c.topic == RESULTS_TOPIC,
                outbox.c.sent_at.is_(None),
            )
            .order_by(outbox.c.id)
            .limit(limit)
        )
        try:
            async with self._engine.connect() as conn:
                rows = (await conn.execute(stmt)).all()
        except Exception as exc:
            raise translate_error(exc, self._engine) from exc
        return [(row.id, row.payload) for row in rows]

    async def mark_results_sent(self, ids: Sequence[int], at: datetime) -> None:
        """Record that the broker accepted these results messages."""
        _require_aware(at, "at")
        if ids:
            await self._submit(_MarkSentOp(self.line, list(ids), at))

    # --- the writer ------------------------------------------------------------------------

    async def _submit(self, op: _Op[T]) -> T:
        if not self._accepting:
            raise StoreError("the store is closed")
        if self._writer.done():
            raise StoreError("the store writer has stopped")
        self._queue.put_nowait(op)
        return await op.future

    async def _write_loop(self) -> None:
        ops: list[_Op[Any]] = []
        try:
            stopping = False
            while not stopping:
                first = await self._queue.get()
                if first is None:
                    break
                ops = [first]
                while len(ops) < MAX_BATCH and not self._queue.empty():
                    nxt = self._queue.get_nowait()
                    if nxt is None:
                        stopping = True
                        break
                    ops.append(nxt)
                try:
                    await self._run(ops)
                except Exception as exc:  # a bug: fail the callers, keep serving others
                    _log.exception("store_writer_error")
                    for op in ops:
                        op.fail(StoreError(f"store writer error: {exc}"))
                ops = []
        finally:
            # Cancelled (or stopped): nobody may wait forever for an answer.
            self._accepting = False
            while not self._queue.empty():
                queued = self._queue.get_nowait()
                if queued is not None:
                    ops.append(queued)
            for op in ops:
                op.fail(StoreError("the store is closed"))

    async def _run(self, ops: list[_Op[Any]]) -> None:
        ops = [op for op in ops if not op.future.done()]  # callers that gave up
        if not ops:
            return
        if len(ops) == 1:
            await self._run_alone(ops[0])
            return
        try:
            await self._commit_reconnecting(ops)
        except Exception as exc:
            self._head_stale = True
            if is_unavailable(exc):
                err = translate_error(exc, self._engine)
                for op in ops:
                    op.fail(err)
                return
            # One operation spoilt the batch (e.g. a key another host took): isolate it.
            _log.warning("store_batch_split", ops=len(ops), detail=str(translate_error(exc)))
            for op in ops:
                await self._run_alone(op)
            return
        for op in ops:
            op.succeed()

    async def _run_alone(self, op: _Op[Any]) -> None:
        for attempt in range(SINGLE_OP_TRIES):
            try:
                await self._commit_reconnecting([op])
            except IntegrityError as exc:
                self._head_stale = True
                violated = _violated(exc)
                if violated == "onboarding":
                    op.fail(OnboardingCollision("onboarding serial number or passcode collision"))
                    return
                if violated == "dac":
                    op.fail(DacCollision("DAC serial collision"))
                    return
                if violated is None:
                    op.fail(translate_error(exc, self._engine))
                    return
                # A key or UID taken concurrently, or the chain moved: the next read sees it.
                if violated == "key" and attempt == SINGLE_OP_TRIES - 2:
                    op.key_taken()
                continue
            except _SlotRace:
                continue  # another host took the last slot(s): the next read sees it
            except Exception as exc:
                self._head_stale = True
                op.fail(translate_error(exc, self._engine))
                return
            op.succeed()
            return
        op.fail(StoreError("database kept refusing the operation (concurrent writers?)"))

    async def _commit_reconnecting(self, ops: list[_Op[Any]]) -> None:
        """_commit; once more on a new connection when the pooled one turned out dead.

        The pool does not ping each connection before use (a round trip per group commit):
        a connection the server dropped (restart, failover, idle kill) fails its first
        statement instead, SQLAlchemy invalidates the pool, and the batch runs again. Every
        operation is idempotent, so a COMMIT whose answer was lost is safe to repeat.
        """
        try:
            await self._commit(ops)
        except DBAPIError as exc:
            if not exc.connection_invalidated:
                raise
            self._head_stale = True
            self.reconnects += 1
            _log.info("database_reconnect", detail=str(translate_error(exc, self._engine)))
            await self._commit(ops)

    async def _commit(self, ops: list[_Op[Any]]) -> None:
        batch = _Batch(self.line, self._clock())
        wants = _Wants()
        for op in ops:
            op.want(wants)
        async with self._write_engine.connect() as conn:
            await conn.execution_options(**{WRITE_TRANSACTION: True})
            async with conn.begin():
                await batch.load(conn, wants)
                for op in ops:
                    op.error = None
                    try:
                        op.apply(batch)
                    except (LinehostError, ValueError) as exc:  # raised before any change
                        op.error = exc
                head = await _load_head(conn, self.line) if self._head_stale else self._head
                head = await batch.flush(conn, head)
        self._head = head
        self._head_stale = False

    def _check_start(self, start: AttemptStart) -> None:
        if start.line != self.line:
            raise ValueError(f"attempt of line {start.line!r} given to the store of {self.line!r}")
        _require_aware(start.started_at, "started_at")


# --- in-memory rows and the batch -----------------------------------------------------------


@dataclass(slots=True, eq=False)
class _AssignmentRow:
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
    changes: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_db(cls, row: Any) -> _AssignmentRow:
        m = row._mapping
        return cls(**{k: m[k] for k in _ASSIGNMENT_COLUMNS}, status=AssignmentStatus(m["status"]))

    def live(self) -> LiveAssignment:
        return LiveAssignment(
            self.id, self.uid, self.status, self.public_key_sha256, self.dac_serial
        )

    def set(self, **values: Any) -> None:
        for key, value in values.items():
            setattr(self, key, value)
        if self.id is not None:
            self.changes.update(values)

    def insert_params(self) -> dict[str, Any]:
        params = {k: getattr(self, k) for k in _ASSIGNMENT_COLUMNS if k != "id"}
        params["status"] = self.status.value
        return params


_ASSIGNMENT_COLUMNS = [c.name for c in assignments.c if c.name != "status"]
_ATTEMPT_COLUMNS = [c.name for c in attempts.c if c.name != "transcript"]


@dataclass(slots=True, eq=False)
class _AttemptRow:
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
    is_new: bool = False
    assignment: _AssignmentRow | None = None  # an assignment inserted in this batch
    transcript: str = ""
    changes: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_db(cls, row: Any) -> _AttemptRow:
        m = row._mapping
        return cls(**{k: m[k] for k in _ATTEMPT_COLUMNS})

    @classmethod
    def begin(cls, start: AttemptStart) -> _AttemptRow:
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
            }
        )

    def insert_params(self) -> dict[str, Any]:
        params = {k: getattr(self, k) for k in _ATTEMPT_COLUMNS}
        if self.assignment is not None:
            params["assignment_id"] = self.assignment.id
        params["transcript"] = self.transcript
        return params


@dataclass(slots=True)
class _Wants:
    attempt_ids: set[str] = field(default_factory=set)
    assignment_ids: set[int] = field(default_factory=set)
    keys: set[str] = field(default_factory=set)
    uids: set[str] = field(default_factory=set)
    running_line: str | None = None
    work_orders: set[str] = field(default_factory=set)
    onboarding_uids: set[str] = field(default_factory=set)
    onboarding: list[OnboardingRequest] = field(default_factory=list)


@dataclass(slots=True)
class _Event:
    entity: str
    entity_id: str
    event: str
    data: dict[str, Any]


class _Batch:
    """The rows one transaction touches, their changes, and what it appends."""

    def __init__(self, line: str, now: datetime) -> None:
        self.line = line
        self.now = now
        self.attempts: dict[str, _AttemptRow] = {}
        self.new_attempts: list[_AttemptRow] = []
        self.running: list[_AttemptRow] = []
        self.assignments: dict[int, _AssignmentRow] = {}
        self.new_assignments: list[_AssignmentRow] = []
        self._by_key: defaultdict[str, list[_AssignmentRow]] = defaultdict(list)
        self._by_uid: defaultdict[str, list[_AssignmentRow]] = defaultdict(list)
        self.events: list[_Event] = []
        self.results: list[str] = []
        self.sent: list[tuple[list[int], datetime]] = []
        self.work_orders: dict[str, tuple[int, int]] = {}  # id -> (quantity, claimed)
        self.slots: defaultdict[str, int] = defaultdict(int)  # id -> slots taken (+) / freed (-)
        self.onboarding = OnboardingBook(now)

    async def load(self, conn: AsyncConnection, wants: _Wants) -> None:
        one_of = _one_of_for(conn)
        if wants.work_orders:
            t = work_orders
            stmt = select(t.c.id, t.c.quantity, t.c.claimed).where(
                one_of(t.c.id, wants.work_orders)
            )
            for row in await _fetch(conn, stmt):
                self.work_orders[row.id] = (int(row.quantity), int(row.claimed))
        await self.onboarding.load(conn, wants.onboarding_uids, wants.onboarding)
        assignment_ids = set(wants.assignment_ids)
        if wants.attempt_ids or wants.running_line is not None:
            clauses: list[ColumnElement[bool]] = []
            if wants.attempt_ids:
                clauses.append(one_of(attempts.c.attempt_id, wants.attempt_ids))
            if wants.running_line is not None:
                clauses.append(
                    and_(attempts.c.line == wants.running_line, attempts.c.outcome.is_(None))
                )
            cols = [attempts.c[k] for k in _ATTEMPT_COLUMNS]
            for row in await _fetch(conn, select(*cols).where(or_(*clauses))):
                attempt = _AttemptRow.from_db(row)
                self.attempts[attempt.attempt_id] = attempt
                if attempt.assignment_id is not None:
                    assignment_ids.add(attempt.assignment_id)
                if attempt.outcome is None and attempt.line == wants.running_line:
                    self.running.append(attempt)
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
        stmt = select(assignments).where(or_(*where)).order_by(assignments.c.id).with_for_update()
        for row in await _fetch(conn, stmt):
            self._index(_AssignmentRow.from_db(row))

    def _index(self, row: _AssignmentRow) -> None:
        if row.id is not None:
            self.assignments[row.id] = row
        self._by_key[row.public_key_sha256].append(row)
        self._by_uid[row.uid].append(row)

    def sharing(self, key: str, uid: str) -> list[_AssignmentRow]:
        """Known assignments with this key or this UID (live ones are all known)."""
        rows = list(self._by_key.get(key, ()))
        rows.extend(r for r in self._by_uid.get(uid, ()) if r.public_key_sha256 != key)
        return rows

    def add_assignment(self, row: _AssignmentRow) -> None:
        self.new_assignments.append(row)
        self._index(row)

    def add_attempt(self, row: _AttemptRow) -> None:
        self.attempts[row.attempt_id] = row
        self.new_attempts.append(row)

    def audit(self, entity: str, entity_id: str, event: str, data: dict[str, Any]) -> None:
        self.events.append(_Event(entity, entity_id, event, data))

    def has_slot(self, work_order: str, freed: int = 0) -> bool:
        """True when the work order (unknown: unlimited) can take one more device."""
        known = self.work_orders.get(work_order)
        if known is None:
            return True
        quantity, claimed = known
        return claimed + self.slots[work_order] - freed < quantity

    def set_status(
        self,
        row: _AssignmentRow,
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
        self, row: _AssignmentRow, event: str, attempt_id: str, **extra: Any
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

    def start_attempt(self, start: AttemptStart) -> _AttemptRow:
        row = _AttemptRow.begin(start)
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
            },
        )
        return row

    def end_attempt(self, row: _AttemptRow, **values: Any) -> None:
        row.set(**values)
        self.audit(
            "attempt",
            row.attempt_id,
            "attempt_ended",
            {
                "uid": row.uid,
                "outcome": row.outcome,
                "detail": row.detail,
                "device_code": row.device_code,
                "dac_serial": row.dac_serial,
                "ended_at": iso_utc(row.ended_at),
            },
        )
        self.results.append(json.dumps(row.record(), separators=(",", ":"), ensure_ascii=False))

    async def flush(self, conn: AsyncConnection, head: ChainHead | None) -> ChainHead | None:
        """Write every change; returns the new chain head."""
        await self._move_slots(conn)
        # Existing assignments first: they only ever leave the live set, which frees
        # the key / UID for a new assignment inserted below.
        await _update_changed(conn, assignments, assignments.c.id, self.assignments.values())
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

    async def _move_slots(self, conn: AsyncConnection) -> None:
        """Apply the work-order slot changes; a claim is guarded and must hit its row."""
        t = work_orders
        for work_order, delta in sorted(self.slots.items()):
            if delta == 0 or (delta > 0 and work_order not in self.work_orders):
                continue
            stmt = update(t).where(t.c.id == work_order).values(claimed=t.c.claimed + delta)
            if delta > 0:
                stmt = stmt.where(t.c.claimed + delta <= t.c.quantity)
            else:
                stmt = stmt.where(t.c.claimed + delta >= 0)
            result = await conn.execute(stmt)
            if delta > 0 and result.rowcount != 1:
                raise _SlotRace(work_order)

    async def _append_audit(
        self, conn: AsyncConnection, head: ChainHead | None
    ) -> ChainHead | None:
        if not self.events:
            return head
        seq, prev = head if head is not None else (0, GENESIS_HASH)
        at = iso_utc(self.now)
        assert at is not None
        rows = []
        for ev in self.events:
            seq += 1
            data_json = canonical_json(ev.data)
            digest = row_hash_of_json(
                prev,
                seq=seq,
                line=self.line,
                at=at,
                entity=ev.entity,
                entity_id=ev.entity_id,
                event=ev.event,
                data_json=data_json,
            )
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
        await conn.execute(insert(audit_log), rows)
        return seq, prev


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
    conn: AsyncConnection, table: Any, key: Any, rows: Iterable[_AssignmentRow | _AttemptRow]
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


async def _load_head(conn: AsyncConnection, line: str) -> ChainHead | None:
    stmt = (
        select(audit_log.c.seq, audit_log.c.row_hash)
        .where(audit_log.c.line == line)
        .order_by(audit_log.c.seq.desc())
        .limit(1)
    )
    row = (await conn.execute(stmt)).first()
    return None if row is None else (int(row.seq), str(row.row_hash))


def _violated(exc: IntegrityError) -> str | None:
    """Which of our uniqueness rules an IntegrityError broke: dac, key, uid, chain or None."""
    text = str(exc.orig).lower()
    if "onboarding" in text:
        return "onboarding"
    if "dac_serial" in text or "dac_sha256" in text:
        return "dac"
    if "public_key_sha256" in text:
        return "key"
    if "ux_assignments_live_uid" in text or "assignments.uid" in text:
        return "uid"
    if "audit_log" in text:
        return "chain"
    return None


def _require_aware(moment: datetime, name: str) -> None:
    if moment.tzinfo is None:
        raise ValueError(f"{name} must be timezone-aware UTC, got {moment.isoformat()}")


# --- operations ------------------------------------------------------------------------------


class _Op(ABC, Generic[T]):
    """One caller's request to the writer: what to read, what to change, what to answer."""

    def __init__(self) -> None:
        self.future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self.error: BaseException | None = None

    @abstractmethod
    def want(self, wants: _Wants) -> None:
        """Name the rows `apply` needs."""

    @abstractmethod
    def apply(self, batch: _Batch) -> None:
        """Decide and change the batch; raise (before changing anything) to refuse."""

    @abstractmethod
    def result(self) -> T:
        """The answer, once committed."""

    def key_taken(self) -> None:
        """The last try's public key was taken concurrently; give up on it next time."""

    def succeed(self) -> None:
        if self.future.done():
            return
        if self.error is not None:
            self.future.set_exception(self.error)
        else:
            self.future.set_result(self.result())

    def fail(self, exc: BaseException) -> None:
        if not self.future.done():
            self.future.set_exception(exc)


class _AssignOp(_Op[AssignResult]):
    def __init__(self, req: AssignRequest) -> None:
        super().__init__()
        self.req = req
        self.force_duplicate = False
        self._answer: tuple[str, _AssignmentRow | None, Outcome | None, str] | None = None
        self._onboarding: OnboardingRecord | None = None
        self._quota_full = False

    def want(self, wants: _Wants) -> None:
        start = self.req.attempt
        assert start.uid is not None
        wants.attempt_ids.add(start.attempt_id)
        wants.keys.add(self.req.public_key_sha256)
        wants.uids.add(start.uid)
        if start.work_order is not None:
            wants.work_orders.add(start.work_order)
        if self.req.onboarding is not None:
            wants.onboarding_uids.add(start.uid)
            wants.onboarding.append(self.req.onboarding)

    def key_taken(self) -> None:
        self.force_duplicate = True

    def apply(self, batch: _Batch) -> None:
        req, start = self.req, self.req.attempt
        assert start.uid is not None
        self._answer = None
        self._onboarding = None
        recorded = batch.attempts.get(start.attempt_id)
        if recorded is not None:
            self._answer = self._recorded(batch, recorded)
            if req.onboarding is not None and self._answer[1] is not None:
                found = batch.onboarding.existing(start.uid, req.onboarding.vid, req.onboarding.pid)
                self._onboarding = None if found is None else found.record()
            return
        existing = batch.sharing(req.public_key_sha256, start.uid)
        views = [row.live() for row in existing]
        rows = {id(view): row for view, row in zip(views, existing, strict=True)}
        decision = decide_assign(
            start.uid, req.public_key_sha256, views, allow_reprovision=req.allow_reprovision
        )
        if self.force_duplicate and decision.kind != "redeliver":
            decision = AssignDecision(
                kind="reject",
                outcome=Outcome.DUPLICATE_KEY,
                detail="public key assigned concurrently by another host",
            )
        work_order = start.work_order
        if work_order is not None and decision.kind == "issue":
            freed = sum(
                1
                for old in decision.supersede
                if rows[id(old)].work_order == work_order and old.status in LIVE_STATUSES
            )
            if not batch.has_slot(work_order, freed):
                self._quota_full = True
                quantity = batch.work_orders[work_order][0]
                decision = AssignDecision(
                    kind="reject",
                    outcome=Outcome.ISSUER_ERROR,
                    detail=f"{WORK_ORDER_COMPLETE}: {work_order} has all {quantity} devices",
                )
        # Prepared before any change: a rule the config cannot meet refuses the whole op.
        onboarding: OnboardingRow | None = None
        if req.onboarding is not None and decision.kind != "reject":
            onboarding = batch.onboarding.prepare(req.onboarding, start)
        extra: dict[str, Any] = {}
        if onboarding is not None:
            self._onboarding = onboarding.record()
            extra = {"serial_num": onboarding.serial_num, "discriminator": onboarding.discriminator}
        attempt = batch.start_attempt(start)
        if decision.kind == "reject":
            assert decision.outcome is not None
            batch.end_attempt(
                attempt, outcome=decision.outcome.value, detail=decision.detail, ended_at=batch.now
            )
            self._answer = ("rejected", None, decision.outcome, decision.detail)
            return
        if decision.kind == "redeliver":
            assert decision.target is not None
            target = rows[id(decision.target)]
            self._bind(attempt, target)
            if onboarding is not None:
                batch.onboarding.bind(onboarding, target)
            batch.audit_assignment(target, "assignment_redelivered", start.attempt_id, **extra)
            self._answer = ("redelivered", target, None, "")
            return
        for old in decision.supersede:
            batch.set_status(rows[id(old)], AssignmentStatus.SUPERSEDED, start.attempt_id)
        dac = req.candidate
        row = _AssignmentRow(
            id=None,
            uid=start.uid,
            status=AssignmentStatus.ISSUED,
            dac_serial=dac.serial_hex,
            dac_sha256=dac.sha256,
            dac_pem=dac.pem,
            public_key_sha256=req.public_key_sha256,
            pai_sha256=dac.pai_sha256,
            vid=dac.vid,
            pid=dac.pid,
            line=start.line,
            station=start.station,
            jig=start.jig,
            attempt_id=start.attempt_id,
            work_order=start.work_order,
            issued_at=batch.now,
            confirmed_at=None,
            updated_at=batch.now,
            bundle_entry_id=dac.bundle_entry_id,
        )
        batch.add_assignment(row)
        if work_order is not None:
            batch.slots[work_order] += 1
        self._bind(attempt, row)
        if onboarding is not None:
            batch.onboarding.bind(onboarding, row)
        batch.audit_assignment(
            row,
            "assignment_issued",
            start.attempt_id,
            dac_serial=row.dac_serial,
            pai_sha256=row.pai_sha256,
            vid=row.vid,
            pid=row.pid,
            line=row.line,
            station=row.station,
            jig=row.jig,
            work_order=row.work_order,
            issued_at=iso_utc(row.issued_at),
            bundle_entry_id=row.bundle_entry_id,
            **extra,
        )
        self._answer = ("issued", row, None, "")

    @staticmethod
    def _bind(attempt: _AttemptRow, row: _AssignmentRow) -> None:
        attempt.dac_serial = row.dac_serial
        attempt.assignment_id = row.id
        attempt.assignment = row if row.id is None else None

    def _recorded(
        self, batch: _Batch, attempt: _AttemptRow
    ) -> tuple[str, _AssignmentRow | None, Outcome | None, str]:
        """A retry of an assign that was already committed: the same answer again."""
        if attempt.assignment_id is not None and attempt.outcome is None:
            row = batch.assignments.get(attempt.assignment_id)
            if row is None:
                raise StoreError(f"attempt {attempt.attempt_id}: its assignment is missing")
            kind = "issued" if row.attempt_id == attempt.attempt_id else "redelivered"
            return (kind, row, None, "")
        if attempt.assignment_id is None and attempt.outcome in _REJECT_OUTCOMES:
            return ("rejected", None, Outcome(attempt.outcome), attempt.detail)
        state = attempt.outcome or "running without an assignment"
        raise StoreError(f"attempt {attempt.attempt_id} is already recorded ({state})")

    def result(self) -> AssignResult:
        assert self._answer is not None
        kind, row, outcome, detail = self._answer
        if row is None:
            if self._quota_full:
                return AssignResult(kind="quota_full", outcome=outcome, detail=detail)
            return AssignResult(kind="rejected", outcome=outcome, detail=detail)
        return AssignResult(
            kind="issued" if kind == "issued" else "redelivered",
            assignment_id=row.id,
            dac_pem=row.dac_pem,
            dac_serial=row.dac_serial,
            onboarding=self._onboarding,
        )


class _EndOp(_Op[None]):
    def __init__(self, start: AttemptStart, end: AttemptEnd) -> None:
        super().__init__()
        self.start = start
        self.end = end

    def want(self, wants: _Wants) -> None:
        wants.attempt_ids.add(self.start.attempt_id)
        if self.end.assignment_id is not None:
            wants.assignment_ids.add(self.end.assignment_id)

    def apply(self, batch: _Batch) -> None:
        start, end = self.start, self.end
        attempt = batch.attempts.get(start.attempt_id)
        if attempt is not None and attempt.outcome is not None:
            return  # already ended: a retry after an unclear commit
        assignment_id = end.assignment_id
        if assignment_id is None and attempt is not None:
            assignment_id = attempt.assignment_id
        assignment = None
        if assignment_id is not None:
            assignment = batch.assignments.get(assignment_id)
            if assignment is None:
                raise StoreError(f"attempt {start.attempt_id}: no assignment {assignment_id}")
        if attempt is None:
            attempt = batch.start_attempt(start)
            attempt.assignment_id = assignment_id
        dac_serial = end.dac_serial or attempt.dac_serial
        if dac_serial is None and assignment is not None:
            dac_serial = assignment.dac_serial
        batch.end_attempt(
            attempt,
            outcome=Outcome(end.outcome).value,
            detail=end.detail,
            device_code=end.device_code,
            dac_serial=dac_serial,
            ended_at=end.ended_at,
            transcript=end.transcript,
        )
        if assignment is not None:
            requested = end.assignment_status
            if requested is not None:
                requested = AssignmentStatus(requested)
            status = next_assignment_status(assignment.status, requested)
            if status is not None:
                batch.set_status(assignment, status, start.attempt_id, confirmed_at=end.ended_at)

    def result(self) -> None:
        return None


class _RecoverOp(_Op[int]):
    def __init__(self, line: str, now: datetime) -> None:
        super().__init__()
        self.line = line
        self.now = now
        self.count = 0

    def want(self, wants: _Wants) -> None:
        wants.running_line = self.line

    def apply(self, batch: _Batch) -> None:
        self.count = 0
        for attempt in batch.running:
            if attempt.outcome is not None:  # ended by an earlier operation of this batch
                continue
            batch.end_attempt(
                attempt,
                outcome=Outcome.DISCONNECTED.value,
                detail=INTERRUPTED_DETAIL,
                ended_at=self.now,
            )
            if attempt.assignment_id is not None:
                assignment = batch.assignments.get(attempt.assignment_id)
                if assignment is not None and assignment.status is AssignmentStatus.ISSUED:
                    batch.set_status(assignment, AssignmentStatus.UNKNOWN, attempt.attempt_id)
            self.count += 1

    def result(self) -> int:
        return self.count


class _MarkSentOp(_Op[None]):
    def __init__(self, line: str, ids: list[int], at: datetime) -> None:
        super().__init__()
        self.line = line
        self.ids = ids
        self.at = at

    def want(self, wants: _Wants) -> None:
        pass

    def apply(self, batch: _Batch) -> None:
        batch.sent.append((self.ids, self.at))

    def result(self) -> None:
        return None


class _SlotRace(Exception):
    """A guarded work-order claim hit no row: another host took the slot since our read."""
