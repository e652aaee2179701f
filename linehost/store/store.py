"""The Store: the line's only way to the database; every write returns after a durable commit.

A façade: writes go as operations (store/operations.py) to the line's group-commit writer
(store/writer.py), which applies them over one unit of work (store/batch.py) per transaction.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime

from sqlalchemy import insert, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

from linehost.errors import StoreError
from linehost.protocol.outcomes import AssignmentStatus, Outcome
from linehost.records import AssignRequest, AssignResult, AttemptEnd, AttemptStart, utcnow
from linehost.store.audit import Audit
from linehost.store.batch import RESULTS_TOPIC, ChainHead, ResultPayload, load_head
from linehost.store.controls import ControlEvent, ControlOp, WorkOrderOp
from linehost.store.decisions import WORK_ORDER_COMPLETE, next_assignment_status
from linehost.store.engine import WRITE_TRANSACTION, create_engine, translate_error
from linehost.store.migrate import open_current, upgrade_to_head
from linehost.store.models import NAME_LEN, outbox, work_orders
from linehost.store.operations import (
    INTERRUPTED_DETAIL,
    AssignOp,
    EndOp,
    MarkSentOp,
    RecoverOp,
)
from linehost.store.writer import CommitHook, GroupWriter

__all__ = ["INTERRUPTED_DETAIL", "WORK_ORDER_COMPLETE", "Store"]


class Store:
    """Attempts, assignments, audit trail and outbox of one line, behind a group-commit writer."""

    def __init__(
        self,
        engine: AsyncEngine,
        *,
        line: str,
        head: ChainHead | None,
        result_payload: ResultPayload,
        write_engine: AsyncEngine | None = None,
        poll_engine: AsyncEngine | None = None,
        clock: Callable[[], datetime] = utcnow,
        commit_hook: CommitHook | None = None,
    ) -> None:
        """Serve `line`: reads over `engine`, the writer's transactions over `write_engine`
        and the relay's outbox polls over `poll_engine` (both default to `engine`);
        `result_payload` makes the results message of each ended attempt
        (`linehost.mqtt.payloads.result_payload`); `clock` dates every write, `commit_hook`
        runs after each COMMIT (fault tests)."""
        self.line = line
        self._engine = engine
        self._write_engine = write_engine or engine
        self._poll_engine = poll_engine or engine
        self._closed = False
        self._writer = GroupWriter(
            self._write_engine,
            line=line,
            head=head,
            result_payload=result_payload,
            clock=clock,
            commit_hook=commit_hook,
        )

    @classmethod
    async def open(
        cls,
        url: str,
        *,
        line: str,
        result_payload: ResultPayload,
        auto_migrate: bool = True,
        clock: Callable[[], datetime] = utcnow,
        commit_hook: CommitHook | None = None,
    ) -> Store:
        """Connect, bring the schema to head (or insist it is there) and start the writer."""
        if not line or len(line) > NAME_LEN:
            raise StoreError(f"line name must be 1..{NAME_LEN} characters, got {line!r}")
        if auto_migrate:
            engine = create_engine(url)
            try:
                await upgrade_to_head(engine)
            except BaseException:
                await engine.dispose()
                raise
        else:
            engine = await open_current(url)
        try:
            async with engine.connect() as conn:
                head = await load_head(conn, line)
        except BaseException as exc:
            await engine.dispose()
            if isinstance(exc, Exception):
                raise translate_error(exc, engine) from exc
            raise
        return cls(
            engine,
            line=line,
            head=head,
            result_payload=result_payload,
            write_engine=create_engine(url, ping=False, writer=True),
            # A poll follows every ended attempt: on PostgreSQL it is now one round trip, where
            # a pinged transaction took six (BEGIN ; ROLLBACK, BEGIN SELECT ROLLBACK). Without
            # the ping a connection the server dropped fails one poll, which the relay retries.
            poll_engine=(
                create_engine(url, autocommit=True, ping=False)
                if engine.dialect.name == "postgresql"
                else None
            ),
            clock=clock,
            commit_hook=commit_hook,
        )

    async def close(self) -> None:
        """Finish what is queued, stop the writer, release the connections."""
        if self._closed:
            return
        self._closed = True
        try:
            await self._writer.close()
        finally:
            for extra in {self._write_engine, self._poll_engine} - {self._engine}:
                await extra.dispose()
            await self._engine.dispose()

    @property
    def engine(self) -> AsyncEngine:
        """The engine, for read-only queries (audit, tests)."""
        return self._engine

    @property
    def poll_engine(self) -> AsyncEngine:
        """The engine of the relay's outbox polls (autocommit, unpinged, on PostgreSQL)."""
        return self._poll_engine

    @property
    def writer(self) -> GroupWriter:
        """The group-commit writer (its clock, commit hook and reconnect count)."""
        return self._writer

    @property
    def reconnects(self) -> int:
        """Batches run again on a new connection after a dead one."""
        return self._writer.reconnects

    def audit(self) -> Audit:
        """Read-only audit queries over this store's database."""
        return Audit(self._engine)

    async def recover_interrupted(self, now: datetime) -> int:
        """End this line's attempts left running by an earlier process as `disconnected`;
        their `issued` assignments become `unknown`. Returns how many were ended."""
        require_aware(now, "now")
        return await self._writer.submit(RecoverOp(self.line, now))

    async def open_work_order(
        self,
        work_order: str,
        quantity: int,
        recorded: tuple[str | None, str | None] | None = None,
    ) -> None:
        """Create the work order, or check that the database has the same quantity for it.

        `recorded` is (cd_sha256, firmware_version) of a work order that names them (or names
        none): kept when it is created, compared when it exists. None leaves both unchecked.
        """
        t = work_orders
        for _ in range(2):
            try:
                # A write transaction from the start: opened while jigs write (OPC UA), a read
                # upgraded to a write would fail at once on SQLite instead of waiting its turn.
                async with self._engine.connect() as plain:
                    conn = await plain.execution_options(**{WRITE_TRANSACTION: True})
                    async with conn.begin():
                        row = (
                            await conn.execute(
                                select(t.c.quantity, t.c.cd_sha256, t.c.firmware_version).where(
                                    t.c.id == work_order
                                )
                            )
                        ).first()
                        if row is None:
                            cd_sha256, firmware = recorded or (None, None)
                            await conn.execute(
                                insert(t).values(
                                    id=work_order, quantity=quantity, claimed=0,
                                    created_at=utcnow(), cd_sha256=cd_sha256,
                                    firmware_version=firmware,
                                )
                            )  # fmt: skip
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
            if recorded is not None:
                _same_work_order(work_order, (row.cd_sha256, row.firmware_version), recorded)
            return
        raise StoreError(f"work order {work_order}: could not be created")

    async def record_control(self, event: ControlEvent) -> None:
        """Append a supervisor's control call to the line's audit chain (durable on return)."""
        await self._writer.submit(ControlOp(event))

    async def control_work_order(
        self, event: ControlEvent, *, open_quantity: int | None = None, close_by: str = ""
    ) -> None:
        """Open (`open_quantity`) or close the work order `event.target` with its audit row in
        one transaction; WorkOrderRefused when it cannot be (nothing written then)."""
        if open_quantity is not None:
            op = WorkOrderOp("open", event.target, event, quantity=open_quantity)
        else:
            op = WorkOrderOp("close", event.target, event, by=close_by)
        await self._writer.submit(op)

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
        return await self._writer.submit(AssignOp(req))

    async def end_attempt(self, start: AttemptStart, end: AttemptEnd) -> None:
        """Record how an attempt ended, its assignment's new status and its results message.

        Idempotent: an attempt that is already ended is left as it is.
        """
        self._check_start(start)
        require_aware(end.ended_at, "ended_at")
        Outcome(end.outcome)
        if end.assignment_status is not None:
            next_assignment_status(AssignmentStatus.ISSUED, AssignmentStatus(end.assignment_status))
        await self._writer.submit(EndOp(start, end))

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
            async with self._poll_engine.connect() as conn:
                rows = (await conn.execute(stmt)).all()
        except Exception as exc:
            raise translate_error(exc, self._engine) from exc
        return [(row.id, row.payload) for row in rows]

    async def mark_results_sent(self, ids: Sequence[int], at: datetime) -> None:
        """Record that the broker accepted these results messages."""
        require_aware(at, "at")
        if ids:
            await self._writer.submit(MarkSentOp(self.line, list(ids), at))

    def _check_start(self, start: AttemptStart) -> None:
        if start.line != self.line:
            raise ValueError(f"attempt of line {start.line!r} given to the store of {self.line!r}")
        require_aware(start.started_at, "started_at")


def require_aware(moment: datetime, name: str) -> None:
    """Raise ValueError unless `moment` is timezone-aware."""
    if moment.tzinfo is None:
        raise ValueError(f"{name} must be timezone-aware UTC, got {moment.isoformat()}")


def _same_work_order(
    work_order: str, stored: tuple[str | None, str | None], given: tuple[str | None, str | None]
) -> None:
    """StoreError when a work order is opened again with another CD or firmware version."""
    for what, have, want in zip(("CD", "firmware version"), stored, given, strict=True):
        if have != want:
            raise StoreError(
                f"work order {work_order} was opened with {what} {_short(have)} (database), "
                f"the config says {_short(want)}"
            )


def _short(value: str | None) -> str:
    if value is None:
        return "none"
    return value[:16] + "…" if len(value) == 64 else value
