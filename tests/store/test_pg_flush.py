"""PostgreSQL single-statement group commit (store/pgflush.py) against the generic flush.

The same operations, in the same order and on the same clock, go to two fresh databases: one
store writes with one statement per batch, the other with one statement per table. Every row
of every table the writer touches, and the audit chain hash for hash, must come out the same.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator, Awaitable
from datetime import datetime
from typing import Any

import pytest
from sqlalchemy import event, text

from linehost.mqtt.payloads import result_payload
from linehost.protocol.outcomes import AssignmentStatus, Outcome
from linehost.records import AttemptEnd
from linehost.store import pgflush
from linehost.store.batch import Batch
from linehost.store.controls import ControlEvent
from linehost.store.engine import create_engine
from linehost.store.rows import AssignmentRow, AttemptRow
from linehost.store.store import Store
from tests.conftest import _postgres_database
from tests.store.conftest import LINE, T0, Factory, record_statements

TABLES = {
    "assignments": "SELECT * FROM assignments ORDER BY id",
    "attempts": "SELECT * FROM attempts ORDER BY attempt_id",
    "audit_log": "SELECT * FROM audit_log ORDER BY line, seq",
    "outbox": "SELECT * FROM outbox ORDER BY id",
    # work_orders.created_at is the wall clock: left out.
    "work_orders": (
        "SELECT id, quantity, claimed, closed_at, closed_by FROM work_orders ORDER BY id"
    ),
}


@pytest.fixture
async def two_urls() -> AsyncIterator[tuple[str, str]]:
    async for first in _postgres_database():
        async for second in _postgres_database():
            yield first, second


class Scenario:
    """A fixed series of store calls (inputs made once), replayable on any store."""

    def __init__(self) -> None:
        make = Factory()
        keys = [make.key() for _ in range(8)]
        uids = [make.uid() for _ in range(8)]
        self.first = [make.request(uids[i], keys[i], jig=f"j{i}") for i in range(6)]
        self.first.append(make.request(uids[6], keys[6], work_order="WO-1"))
        self.ends = [
            dataclasses.replace(
                make.end(Outcome.PROVISIONED, status=AssignmentStatus.CONFIRMED, device_code=0,
                         transcript="Init\nStart_provisioning"),
                attest_nonce="ab" * 32, attest_signature="c2lnbmF0dXJl",
            ),
            make.end(Outcome.PROVISIONED, status=AssignmentStatus.CONFIRMED, device_code=0),
            make.end(Outcome.DEVICE_ERROR, status=AssignmentStatus.FAILED, device_code=3,
                     detail="finish:003"),
            make.end(Outcome.TIMEOUT, detail="no finish"),
        ]  # fmt: skip
        bare = dataclasses.replace(make.start(jig="j8"), key_proof="none")
        bare_request = dataclasses.replace(make.request(start=bare), key_proof="none")
        self.second = [make.request(jig="j7"), bare_request]
        # uid 3 timed out (unknown) and presents a new key: issue, superseding the old DAC.
        self.supersede = make.request(uids[3], make.key(), jig="j3")
        # uid 0 is confirmed; another uid with its key: duplicate key.
        self.duplicate = make.request(make.uid(), keys[0], jig="j4")
        # uid 4 was issued and never ended: the same key again is a redelivery.
        self.redeliver = make.request(uids[4], keys[4], jig="j4")
        self.end_supersede = make.end(
            Outcome.PROVISIONED, status=AssignmentStatus.CONFIRMED, device_code=0
        )
        self.early_end_start = make.start(jig="j9")  # ends without an assign (bad CSR)
        self.early_end = make.end(Outcome.CSR_REJECTED, detail="bad CSR")
        self.late_end_start = make.start(jig="j10")
        self.late_end = make.end(Outcome.TIMEOUT, detail="no UID")
        self.sent_at, self.recovered_at = make.tick(), make.tick()

    async def play(self, store: Store) -> None:
        await store.open_work_order("WO-1", 10)
        first = await asyncio.gather(*(store.assign(r) for r in self.first))
        assert all(r.kind == "issued" for r in first)
        # Ends and new assigns in one group commit.
        ends: list[Awaitable[Any]] = [
            store.end_attempt(r.attempt, _with_id(e, res.assignment_id))
            for r, e, res in zip(self.first, self.ends, first, strict=False)
        ]
        await asyncio.gather(*ends, *(store.assign(r) for r in self.second))
        # A retried assign of a committed attempt: the same answer, nothing new.
        again = await store.assign(self.first[5])
        assert again.assignment_id == first[5].assignment_id
        results = await asyncio.gather(
            store.assign(self.supersede),
            store.assign(self.duplicate),
            store.assign(self.redeliver),
            store.end_attempt(self.early_end_start, self.early_end),
        )
        assert [r.kind for r in results[:3]] == ["issued", "rejected", "redelivered"]
        await store.end_attempt(
            self.supersede.attempt,
            _with_id(self.end_supersede, results[0].assignment_id),
        )
        # A supervisor opens and closes work orders: their rows and audit rows in the batch.
        await store.control_work_order(
            ControlEvent("work_order_opened", "WO-2", {"quantity": 5}), open_quantity=5
        )
        await asyncio.gather(
            store.control_work_order(
                ControlEvent("work_order_closed", "WO-2", {"by": "alice"}), close_by="alice"
            ),
            store.end_attempt(self.late_end_start, self.late_end),
        )
        pending = await store.pending_results(100)
        assert len(pending) >= 5
        await asyncio.gather(
            store.mark_results_sent([i for i, _ in pending[:3]], self.sent_at),
            store.recover_interrupted(self.recovered_at),
        )


def _with_id(end: AttemptEnd, assignment_id: int | None) -> AttemptEnd:
    return dataclasses.replace(end, assignment_id=assignment_id)


async def _run(url: str, scenario: Scenario, *, single: bool) -> tuple[dict[str, Any], int]:
    clock = _Clock()
    store = await Store.open(url, line=LINE, clock=clock, result_payload=result_payload)
    store.writer.single_statement = single
    statements = 0

    def count(*_args: Any) -> None:
        nonlocal statements
        statements += 1

    event.listen(store.writer.engine.sync_engine, "before_cursor_execute", count)
    try:
        await scenario.play(store)
        assert await store.audit().verify_audit_chain() == []
        tables = {}
        async with store.engine.connect() as conn:
            for name, sql in TABLES.items():
                tables[name] = [dict(r) for r in (await conn.execute(text(sql))).mappings()]
    finally:
        await store.close()
    return tables, statements


class _Clock:
    """One tick per group commit: both stores date the same batches alike."""

    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        return self.now


@pytest.mark.postgres
async def test_single_statement_writes_what_the_generic_flush_writes(
    two_urls: tuple[str, str],
) -> None:
    scenario = Scenario()
    generic, generic_statements = await _run(two_urls[0], scenario, single=False)
    single, single_statements = await _run(two_urls[1], scenario, single=True)
    assert generic["audit_log"], "the scenario wrote an audit chain"
    assert len(generic["assignments"]) == 10
    statuses = sorted(r["status"] for r in generic["assignments"])
    assert statuses.count("superseded") == 1
    assert statuses.count("failed") == 1
    assert any(r["sent_at"] is not None for r in generic["outbox"])
    # The columns added by other issues travel too: key proof, attestation, closed orders.
    assert any(r["key_proof"] == "none" for r in generic["assignments"])
    assert any(r["attest_nonce"] == "ab" * 32 for r in generic["attempts"])
    assert any(r["closed_by"] == "alice" for r in generic["work_orders"])
    for name in TABLES:
        assert single[name] == generic[name], name
    # Same rows, fewer round trips.
    assert single_statements < generic_statements


def test_fits_and_supersedes_choose_the_path() -> None:
    """A change pgflush does not carry, or onboarding rows, send the batch to the generic flush;
    an updated assignment sharing a UID with a new one is updated first."""
    make = Factory()
    batch = Batch(LINE, T0, result_payload=result_payload)
    assert pgflush.fits(batch)
    stored = AttemptRow.begin(make.start())
    stored.is_new = False
    batch.attempts[stored.attempt_id] = stored
    stored.set(outcome=Outcome.PROVISIONED.value, ended_at=T0)
    assert pgflush.fits(batch)
    stored.set(uid="ABCD")  # never changed by an operation: not in ATTEMPT_UPDATE
    assert not pgflush.fits(batch)
    stored.changes.clear()
    old = _assignment(make, 1, "AA")
    batch.assignments[1] = old
    old.set(status=AssignmentStatus.SUPERSEDED, updated_at=T0)
    assert pgflush.fits(batch)
    assert not pgflush.supersedes(batch)
    batch.add_assignment(_assignment(make, None, "AA"))
    assert pgflush.supersedes(batch)
    batch.onboarding._new.append(object())  # type: ignore[arg-type]
    assert not pgflush.fits(batch)


def _assignment(make: Factory, row_id: int | None, uid: str) -> AssignmentRow:
    return AssignmentRow(
        id=row_id, uid=uid, status=AssignmentStatus.ISSUED, dac_serial=make.serial(),
        dac_sha256=make.key(), dac_pem="pem", public_key_sha256=make.key(), pai_sha256="ab" * 32,
        vid="FFF1", pid="8000", line=LINE, station="st1", jig="j1", attempt_id="a",
        work_order=None, issued_at=T0, confirmed_at=None, updated_at=T0, bundle_entry_id=None,
    )  # fmt: skip


async def test_a_thousand_jigs_wait_for_one_group_commit_at_most(db_url: str) -> None:
    """Every jig of a 1,000-jig line queued at once: one group commit takes them all (a device
    waits for the commit in flight and its own, never for a third)."""
    make = Factory()
    store = await Store.open(db_url, line=LINE, result_payload=result_payload)
    commits = 0

    def count(*_args: Any) -> None:
        nonlocal commits
        commits += 1

    event.listen(store.writer.engine.sync_engine, "commit", count)
    try:
        requests = [make.request(jig=f"j{i}") for i in range(1000)]
        results = await asyncio.gather(*(store.assign(r) for r in requests))
        assert {r.kind for r in results} == {"issued"}
        assert commits <= 2
        assert await store.audit().verify_audit_chain() == []
    finally:
        await store.close()


@pytest.mark.postgres
async def test_the_single_read_keeps_to_the_indexes(two_urls: tuple[str, str]) -> None:
    """EXPLAIN of the batch read: assignments only through index conditions (primary key and
    the two live partial unique indexes), never a scan of the table or of a whole index."""
    store = await Store.open(two_urls[0], line=LINE, result_payload=result_payload)
    await store.close()
    params = (["a"], LINE, [1], ["k"], ["u"])
    engine = create_engine(two_urls[0])
    try:
        async with engine.connect() as conn:
            await conn.exec_driver_sql("SET enable_seqscan = off")
            result = await conn.exec_driver_sql("EXPLAIN " + pgflush.LOAD_SQL, params)
            plan = [row[0] for row in result.all()]
    finally:
        await engine.dispose()
    text_plan = "\n".join(plan)
    assert "Seq Scan on assignments" not in text_plan, text_plan
    scans = [i for i, line in enumerate(plan) if "Bitmap Index Scan on" in line]
    on_assignments = [i for i in scans if "assignments" in plan[i]]
    assert {plan[i].split(" on ")[1].split()[0] for i in on_assignments} == {
        "pk_assignments",
        "ux_assignments_live_public_key",
        "ux_assignments_live_uid",
    }, text_plan
    for i in on_assignments:  # each with its own condition: no whole-index scan
        assert "Index Cond" in plan[i + 1], text_plan


@pytest.mark.postgres
async def test_the_writer_keeps_to_the_indexes_while_the_tables_are_new(
    two_urls: tuple[str, str],
) -> None:
    """A new line database has no statistics: the writer's statements, prepared once, would
    keep plans made on near-empty tables and scan them whole at every group commit as they
    grow (seen in the line benchmark). Its connections keep to the indexes instead."""
    make = Factory()
    store = await Store.open(two_urls[0], line=LINE, result_payload=result_payload)
    stats = create_engine(two_urls[0])
    try:
        async with store.writer.engine.connect() as conn:
            assert (await conn.exec_driver_sql("SHOW enable_seqscan")).scalar() == "off"
            plan_cache = (await conn.exec_driver_sql("SHOW plan_cache_mode")).scalar()
            assert plan_cache == "force_generic_plan"
        async with store.engine.connect() as conn:  # the readers plan as usual
            assert (await conn.exec_driver_sql("SHOW enable_seqscan")).scalar() == "on"
        for _ in range(20):  # group commits of 10 devices each: assigned, then ended
            requests = [make.request(jig=f"j{i}") for i in range(10)]
            results = await asyncio.gather(*(store.assign(r) for r in requests))
            ends = [
                make.end(assignment_id=r.assignment_id, status=AssignmentStatus.CONFIRMED)
                for r in results
            ]
            await asyncio.gather(
                *(store.end_attempt(q.attempt, e) for q, e in zip(requests, ends, strict=True))
            )
        # Prepared once, planned once: no statement of the writer is planned anew per commit.
        async with store.writer.engine.connect() as conn:  # the writer's one connection
            custom, generic = (
                await conn.exec_driver_sql(
                    "SELECT coalesce(sum(custom_plans), 0), coalesce(sum(generic_plans), 0) "
                    "FROM pg_prepared_statements"
                )
            ).one()
        assert (custom, generic > 40) == (0, True), (custom, generic)
        await store.close()  # its backends report their statistics as they end

        async def scans() -> dict[str, tuple[int, int]]:
            async with stats.connect() as conn:
                rows = await conn.exec_driver_sql(
                    "SELECT relname, seq_scan, coalesce(idx_scan, 0) FROM pg_stat_user_tables "
                    "WHERE relname IN ('assignments', 'attempts')"
                )
                return {r[0]: (int(r[1]), int(r[2])) for r in rows}

        found: dict[str, tuple[int, int]] = {}
        for _ in range(100):
            found = await scans()
            if len(found) == 2 and all(idx > 100 for _, idx in found.values()):
                break
            await asyncio.sleep(0.1)
        assert all(idx > 100 for _, idx in found.values()), found  # the writes were counted
        # A few scans from opening the store (migrations, the chain head), none per commit.
        assert all(seq < 10 for seq, _ in found.values()), found
    finally:
        await store.close()
        await stats.dispose()


@pytest.mark.postgres
async def test_an_outbox_poll_is_one_round_trip(
    two_urls: tuple[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The relay polls the outbox after every ended attempt. In a transaction behind a pool
    ping, one poll was six statements (BEGIN ; ROLLBACK, BEGIN SELECT ROLLBACK)."""
    store = await Store.open(two_urls[0], line=LINE, result_payload=result_payload)
    try:
        await store.pending_results(10)  # its connection is made (the dialect asks its questions)
        recorded = record_statements(monkeypatch)
        for _ in range(3):
            assert await store.pending_results(10) == []
        sent = [query for _conn, query in recorded]
        assert len(sent) == 3, sent
        assert all(q.lstrip().upper().startswith("SELECT") for q in sent), sent
    finally:
        await store.close()
