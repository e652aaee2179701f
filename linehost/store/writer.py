"""The group-commit writer: one task takes every queued operation, applies them in order in one
transaction, commits once, and only then answers each caller. It alone extends the line's audit
hash chain.

On PostgreSQL the next group commit's transaction is begun while the writer waits (or while
the group commit before it is in flight): a device's record then costs three round trips
(load, flush, COMMIT) instead of four and a pool checkout. Nothing is read in it before the
group commit that uses it starts, so under READ COMMITTED it sees every earlier commit. It is
given back after `SPARE_IDLE` seconds without work, so an idle line does not keep a session
`idle in transaction`."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime
from typing import Any, Final, TypeVar

import structlog
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncTransaction

from linehost.errors import DacCollision, LinehostError, OnboardingCollision, StoreError
from linehost.records import utcnow
from linehost.store.batch import Batch, ChainHead, ResultPayload, SlotRace, Wants, load_head
from linehost.store.chain import CommittedRow
from linehost.store.engine import (
    WRITE_TRANSACTION,
    is_unavailable,
    translate_error,
    violation_text,
)
from linehost.store.operations import Op

#: Operations per group commit: every jig of a 1,000-jig line has at most one queued, so each
#: waits at most for the group commit in flight and its own (issue 18).
MAX_BATCH: Final = 1024
SINGLE_OP_TRIES: Final = 3  # after a failed batch, tries per operation on its own
#: Seconds a begun transaction waits for work before it is given back (PostgreSQL).
SPARE_IDLE: Final = 2.0

_log = structlog.get_logger("linehost.store")

T = TypeVar("T")
#: Runs after each COMMIT, before the writer trusts it (fault tests: a link lost after COMMIT).
CommitHook = Callable[[], Awaitable[None]]
#: Told the audit rows of each group commit once it is trusted (the checkpointer's feed, so it
#: need not read back what this process wrote). Must not block: it runs in the writer's task.
CommitListener = Callable[[Sequence[CommittedRow]], None]
#: A pooled connection and the write transaction begun on it.
Begun = tuple[AsyncConnection, AsyncTransaction]


class GroupWriter:
    """Serialises a line's writes into group commits over `engine`."""

    def __init__(
        self,
        engine: AsyncEngine,
        *,
        line: str,
        head: ChainHead | None,
        result_payload: ResultPayload,
        clock: Callable[[], datetime] = utcnow,
        commit_hook: CommitHook | None = None,
        single_statement: bool = True,
    ) -> None:
        """Write for `line`, whose chain ends at `head`; `result_payload` makes the outbox's
        results messages; `clock` dates each batch; `single_statement` (PostgreSQL): a batch's
        writes as one statement (pgflush)."""
        self.line = line
        self.result_payload = result_payload
        self.engine = engine
        self.clock = clock
        self.commit_hook = commit_hook
        self.single_statement = single_statement
        self.reconnects = 0  # batches run again on a new connection after a dead one
        self._head = head
        self._head_stale = False
        # PostgreSQL: the next group commit's transaction, begun ahead (see the module's doc).
        self._begin_ahead = engine.dialect.name == "postgresql"
        self._spare: asyncio.Task[Begun] | None = None
        self._releasing: set[asyncio.Task[None]] = set()
        self._listeners: list[CommitListener] = []
        self._queue: asyncio.Queue[Op[Any] | None] = asyncio.Queue()
        self._accepting = True  # new operations are taken
        self._task = asyncio.create_task(self._write_loop(), name=f"store-writer-{line}")

    def add_commit_listener(self, listener: CommitListener) -> None:
        """Call `listener` with the audit rows of every group commit from now on."""
        self._listeners.append(listener)

    async def submit(self, op: Op[T]) -> T:
        """Queue `op` and wait for its answer, given after its batch committed."""
        if not self._accepting:
            raise StoreError("the store is closed")
        if self._task.done():
            raise StoreError("the store writer has stopped")
        self._queue.put_nowait(op)
        return await op.future

    async def close(self) -> None:
        """Finish what is queued and stop."""
        self._accepting = False
        self._queue.put_nowait(None)
        await asyncio.wait([self._task])  # its end, without its cancellation
        if self._releasing:
            await asyncio.wait(self._releasing)

    def abort(self) -> None:
        """Stop at once (tests: a writer that died); queued callers get StoreError."""
        self._task.cancel()

    async def _write_loop(self) -> None:
        ops: list[Op[Any]] = []
        try:
            stopping = False
            while not stopping:
                first = await self._next_op()
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
            self._give_back_spare()

    async def _next_op(self) -> Op[Any] | None:
        """The next queued operation; a begun transaction idle for SPARE_IDLE is given back."""
        if self._spare is None:
            return await self._queue.get()
        try:
            async with asyncio.timeout(SPARE_IDLE):
                return await self._queue.get()
        except TimeoutError:
            self._give_back_spare()
            return await self._queue.get()

    async def _begin(self) -> Begun:
        """A pooled connection with the write transaction begun on it."""
        conn = await self.engine.connect()
        try:
            await conn.execution_options(**{WRITE_TRANSACTION: True})
            trans = await conn.begin()
            if self._begin_ahead:
                # asyncpg sends BEGIN with the first statement: make it go now.
                await conn.exec_driver_sql("SELECT 1")
        except BaseException:
            with contextlib.suppress(Exception):
                await conn.close()
            raise
        return conn, trans

    async def _take_begun(self) -> Begun:
        """The transaction begun ahead, else a new one; then begin the next one ahead."""
        spare, self._spare = self._spare, None
        begun: Begun | None = None
        if spare is not None:
            try:
                begun = await spare
            except Exception as exc:  # e.g. a connection the server dropped: begin anew
                _log.info("database_begin_ahead_failed", detail=str(translate_error(exc)))
        if begun is None:
            begun = await self._begin()
        if self._begin_ahead:
            self._spare = asyncio.create_task(self._begin(), name=f"store-begin-{self.line}")
        return begun

    def _give_back_spare(self) -> None:
        """Roll back and return the transaction begun ahead, in a task of its own (the writer's
        may be cancelled); `close` waits for it."""
        spare, self._spare = self._spare, None
        if spare is None:
            return
        task = asyncio.get_running_loop().create_task(_give_back(spare))
        self._releasing.add(task)
        task.add_done_callback(self._releasing.discard)

    async def _run(self, ops: list[Op[Any]]) -> None:
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
                err = translate_error(exc, self.engine)
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

    async def _run_alone(self, op: Op[Any]) -> None:
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
                    op.fail(translate_error(exc, self.engine))
                    return
                # A key or UID taken concurrently, or the chain moved: the next read sees it.
                if violated == "key" and attempt == SINGLE_OP_TRIES - 2:
                    op.key_taken()
                continue
            except SlotRace:
                continue  # another host took the last slot(s): the next read sees it
            except Exception as exc:
                self._head_stale = True
                op.fail(translate_error(exc, self.engine))
                return
            op.succeed()
            return
        op.fail(StoreError("database kept refusing the operation (concurrent writers?)"))

    async def _commit_reconnecting(self, ops: list[Op[Any]]) -> None:
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
            _log.info("database_reconnect", detail=str(translate_error(exc, self.engine)))
            await self._commit(ops)

    async def _commit(self, ops: list[Op[Any]]) -> None:
        batch = Batch(
            self.line,
            self.clock(),
            result_payload=self.result_payload,
            single_statement=self.single_statement,
        )
        wants = Wants()
        for op in ops:
            op.want(wants)
        conn, trans = await self._take_begun()
        try:
            try:
                await batch.load(conn, wants)
                for op in ops:
                    op.error = None
                    try:
                        op.apply(batch)
                    except (LinehostError, ValueError) as exc:  # raised before any change
                        op.error = exc
                head = await load_head(conn, self.line) if self._head_stale else self._head
                head = await batch.flush(conn, head)
            except BaseException:
                with contextlib.suppress(Exception):  # the first failure is the one to see
                    await trans.rollback()
                raise
            await trans.commit()
        finally:
            await conn.close()
        if self.commit_hook is not None:
            await self.commit_hook()
        self._head = head
        self._head_stale = False
        if batch.audit_written:
            for listener in self._listeners:
                try:
                    listener(batch.audit_written)
                except Exception:  # the batch is committed: its callers must hear so
                    _log.exception("commit_listener_failed")


async def _give_back(spare: asyncio.Task[Begun]) -> None:
    """Roll back a transaction begun ahead and return its connection to the pool."""
    await asyncio.wait([spare])
    if spare.cancelled() or spare.exception() is not None:
        return  # nothing was begun (the failure is the next begin's to meet)
    conn, trans = spare.result()
    with contextlib.suppress(Exception):  # a dead connection has nothing to give back
        await trans.rollback()
    with contextlib.suppress(Exception):
        await conn.close()


def _violated(exc: IntegrityError) -> str | None:
    """Which of our uniqueness rules an IntegrityError broke: dac, key, uid, chain or None."""
    text = violation_text(exc)
    if "onboarding" in text:
        return "onboarding"
    if "dac_serial" in text or "dac_sha256" in text:
        return "dac"
    if "public_key_sha256" in text or "ux_assignments_live_public_key" in text:
        return "key"
    if "ux_assignments_live_uid" in text or "assignments.uid" in text:
        return "uid"
    if "audit_log" in text:
        return "chain"
    return None
