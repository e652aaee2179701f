"""Store.assign: every decision rule, durability, idempotency and the database's own guarantees."""

from __future__ import annotations

import asyncio
import dataclasses
import json
from collections import Counter
from typing import Any

import pytest
from sqlalchemy import event, insert
from sqlalchemy.exc import IntegrityError

from linehost.errors import DacCollision, DatabaseUnavailable, StoreError
from linehost.mqtt.payloads import result_payload
from linehost.protocol.outcomes import AssignmentStatus, Outcome
from linehost.records import AssignResult
from linehost.store import batch as batch_module
from linehost.store.engine import create_engine
from linehost.store.models import assignments
from linehost.store.store import Store

pytestmark = pytest.mark.timeout(120)


async def status_of(raw: Any, assignment_id: int | None) -> str:
    return str(await raw.scalar("SELECT status FROM assignments WHERE id = :i", i=assignment_id))


async def attempt_row(raw: Any, attempt_id: str) -> dict[str, Any]:
    found = await raw.rows("SELECT * FROM attempts WHERE attempt_id = :a", a=attempt_id)
    assert len(found) == 1
    return found[0]


async def events_of(raw: Any, entity_id: str) -> list[str]:
    found = await raw.rows(
        "SELECT event FROM audit_log WHERE entity_id = :e ORDER BY seq", e=str(entity_id)
    )
    return [r["event"] for r in found]


async def confirm(store: Store, make: Any, req: Any, result: AssignResult) -> None:
    await store.end_attempt(
        req.attempt,
        make.end(assignment_id=result.assignment_id, status=AssignmentStatus.CONFIRMED),
    )


# --- the decision rules ----------------------------------------------------------------------


async def test_new_device_is_issued_and_recorded_running(store: Store, make: Any, raw: Any) -> None:
    req = make.request(work_order="WO-1")
    result = await store.assign(req)
    assert result.kind == "issued"
    assert result.dac_pem == req.candidate.pem
    assert result.dac_serial == req.candidate.serial_hex
    assert await status_of(raw, result.assignment_id) == "issued"
    row = await attempt_row(raw, req.attempt.attempt_id)
    assert row["outcome"] is None
    assert row["assignment_id"] == result.assignment_id
    assert row["dac_serial"] == result.dac_serial
    assert row["work_order"] == "WO-1"
    a = (await raw.rows("SELECT * FROM assignments WHERE id = :i", i=result.assignment_id))[0]
    assert a["attempt_id"] == req.attempt.attempt_id
    assert a["public_key_sha256"] == req.public_key_sha256
    assert a["dac_sha256"] == req.candidate.sha256
    assert a["work_order"] == "WO-1"
    assert await events_of(raw, req.attempt.attempt_id) == ["attempt_started"]
    assert await events_of(raw, result.dac_serial) == ["assignment_issued"]
    assert await store.pending_results(10) == []  # nothing ended yet


async def test_key_live_for_another_uid_is_duplicate_key(store: Store, make: Any, raw: Any) -> None:
    first = make.request()
    await store.assign(first)
    thief = make.request(key=first.public_key_sha256)
    result = await store.assign(thief)
    assert result.kind == "rejected"
    assert result.outcome is Outcome.DUPLICATE_KEY
    assert first.attempt.uid in result.detail
    row = await attempt_row(raw, thief.attempt.attempt_id)
    assert row["outcome"] == "duplicate_key"
    assert row["ended_at"] is not None
    assert row["assignment_id"] is None
    assert await raw.scalar("SELECT count(*) FROM assignments") == 1
    [(_, payload)] = await store.pending_results(10)
    record = json.loads(payload)
    assert record["attempt_id"] == thief.attempt.attempt_id
    assert record["outcome"] == "duplicate_key"
    assert await events_of(raw, thief.attempt.attempt_id) == ["attempt_started", "attempt_ended"]


async def test_confirmed_same_key_is_redelivered(store: Store, make: Any, raw: Any) -> None:
    first = make.request()
    issued = await store.assign(first)
    await confirm(store, make, first, issued)
    again = make.request(uid=first.attempt.uid, key=first.public_key_sha256)
    result = await store.assign(again)
    assert result.kind == "redelivered"
    assert result.assignment_id == issued.assignment_id
    assert result.dac_pem == first.candidate.pem
    assert result.dac_serial == issued.dac_serial
    assert await status_of(raw, issued.assignment_id) == "confirmed"
    row = await attempt_row(raw, again.attempt.attempt_id)
    assert row["assignment_id"] == issued.assignment_id
    assert row["outcome"] is None
    assert (await events_of(raw, issued.dac_serial))[-1] == "assignment_redelivered"


async def test_confirmed_other_key_is_already_provisioned(
    store: Store, make: Any, raw: Any
) -> None:
    first = make.request()
    issued = await store.assign(first)
    await confirm(store, make, first, issued)
    other = make.request(uid=first.attempt.uid)
    result = await store.assign(other)
    assert result.kind == "rejected"
    assert result.outcome is Outcome.ALREADY_PROVISIONED
    assert issued.dac_serial in result.detail
    assert await status_of(raw, issued.assignment_id) == "confirmed"
    assert (await attempt_row(raw, other.attempt.attempt_id))["outcome"] == "already_provisioned"
    payloads = [json.loads(p) for _, p in await store.pending_results(10)]
    assert [p["outcome"] for p in payloads] == ["provisioned", "already_provisioned"]


async def test_confirmed_other_key_with_reprovision_supersedes(
    store: Store, make: Any, raw: Any
) -> None:
    first = make.request()
    issued = await store.assign(first)
    await confirm(store, make, first, issued)
    other = make.request(uid=first.attempt.uid, allow_reprovision=True)
    result = await store.assign(other)
    assert result.kind == "issued"
    assert result.assignment_id != issued.assignment_id
    assert await status_of(raw, issued.assignment_id) == "superseded"
    assert await status_of(raw, result.assignment_id) == "issued"
    assert (await events_of(raw, issued.dac_serial))[-1] == "assignment_superseded"


@pytest.mark.parametrize("status", ["issued", "unknown"])
async def test_waiting_same_key_is_redelivered(
    store: Store, make: Any, raw: Any, status: str
) -> None:
    first = make.request()
    issued = await store.assign(first)
    if status == "unknown":
        await store.end_attempt(
            first.attempt,
            make.end(
                Outcome.TIMEOUT, assignment_id=issued.assignment_id, status=AssignmentStatus.UNKNOWN
            ),
        )
    again = make.request(uid=first.attempt.uid, key=first.public_key_sha256, jig="j2")
    result = await store.assign(again)
    assert result.kind == "redelivered"
    assert result.assignment_id == issued.assignment_id
    assert result.dac_pem == first.candidate.pem
    assert await status_of(raw, issued.assignment_id) == status
    assert await raw.scalar("SELECT count(*) FROM assignments") == 1


@pytest.mark.parametrize("status", ["issued", "unknown"])
@pytest.mark.parametrize("allow", [False, True])
async def test_waiting_other_key_is_superseded(
    store: Store, make: Any, raw: Any, status: str, allow: bool
) -> None:
    first = make.request()
    issued = await store.assign(first)
    if status == "unknown":
        await store.end_attempt(
            first.attempt,
            make.end(Outcome.DISCONNECTED, assignment_id=issued.assignment_id),
        )
    other = make.request(uid=first.attempt.uid, allow_reprovision=allow)
    result = await store.assign(other)
    assert result.kind == "issued"
    assert await status_of(raw, issued.assignment_id) == "superseded"
    assert await status_of(raw, result.assignment_id) == "issued"


async def test_failed_assignment_does_not_block(store: Store, make: Any, raw: Any) -> None:
    first = make.request()
    issued = await store.assign(first)
    await store.end_attempt(
        first.attempt,
        make.end(
            Outcome.DEVICE_ERROR,
            assignment_id=issued.assignment_id,
            status=AssignmentStatus.FAILED,
            device_code=3,
        ),
    )
    # Same key, same UID: a failed DAC is never used again, so a new one is issued.
    again = make.request(uid=first.attempt.uid, key=first.public_key_sha256)
    result = await store.assign(again)
    assert result.kind == "issued"
    assert result.assignment_id != issued.assignment_id
    assert await status_of(raw, issued.assignment_id) == "failed"
    # And the key is free for another UID too once nothing live holds it.
    await store.end_attempt(
        again.attempt,
        make.end(Outcome.DEVICE_ERROR, assignment_id=result.assignment_id, status="failed"),
    )
    other = await store.assign(make.request(key=first.public_key_sha256))
    assert other.kind == "issued"


# --- idempotency and refusals ----------------------------------------------------------------


async def test_assign_retry_returns_the_recorded_result(store: Store, make: Any, raw: Any) -> None:
    req = make.request()
    first = await store.assign(req)
    # The caller retries the same attempt (e.g. after DatabaseUnavailable), maybe with a new DAC.
    retry = make.request(start=req.attempt, key=req.public_key_sha256)
    assert await store.assign(retry) == first
    assert await raw.scalar("SELECT count(*) FROM assignments") == 1
    assert await raw.scalar("SELECT count(*) FROM attempts") == 1

    redelivery = make.request(uid=req.attempt.uid, key=req.public_key_sha256)
    r1 = await store.assign(redelivery)
    assert r1.kind == "redelivered"
    assert await store.assign(redelivery) == r1

    rejected = make.request(key=req.public_key_sha256)
    r2 = await store.assign(rejected)
    assert r2.kind == "rejected"
    assert await store.assign(rejected) == r2
    assert len(await store.pending_results(10)) == 1


async def test_assign_for_an_ended_attempt_is_refused(store: Store, make: Any) -> None:
    req = make.request()
    await store.end_attempt(req.attempt, make.end(Outcome.TIMEOUT, detail="csr"))
    with pytest.raises(StoreError, match="already recorded"):
        await store.assign(req)


async def test_assign_checks_its_input(store: Store, make: Any) -> None:
    with pytest.raises(ValueError, match="line"):
        await store.assign(make.request(line="line-2"))
    with pytest.raises(ValueError, match="UID"):
        await store.assign(make.request(start=dataclasses.replace(make.start(), uid=None)))
    req = make.request()
    with pytest.raises(ValueError, match="public key"):
        await store.assign(dataclasses.replace(req, public_key_sha256=make.key()))


@pytest.mark.parametrize("clash", ["serial", "sha256"])
async def test_dac_collision_is_an_issuer_error(
    store: Store, make: Any, raw: Any, clash: str
) -> None:
    first = make.request()
    await store.assign(first)
    key = make.key()
    if clash == "serial":
        dac = make.dac(key, serial=first.candidate.serial_hex)
    else:
        dac = make.dac(key, sha256=first.candidate.sha256)
    req = make.request(key=key, dac=dac)
    with pytest.raises(DacCollision, match="DAC serial collision"):
        await store.assign(req)
    assert await raw.scalar("SELECT count(*) FROM attempts") == 1  # nothing of it recorded
    # The caller draws a new DAC and retries the same attempt.
    result = await store.assign(make.request(start=req.attempt, key=key))
    assert result.kind == "issued"


# --- guarantees of the database itself -------------------------------------------------------


def _assignment(make: Any, uid: str, key: str, status: str = "issued") -> dict[str, Any]:
    dac = make.dac(key)
    return {
        "uid": uid,
        "status": status,
        "dac_serial": dac.serial_hex,
        "dac_sha256": dac.sha256,
        "dac_pem": dac.pem,
        "public_key_sha256": key,
        "pai_sha256": dac.pai_sha256,
        "vid": "FFF1",
        "pid": "8000",
        "line": "other-line",
        "station": "st9",
        "jig": "j9",
        "attempt_id": "00000000-0000-0000-0000-000000000000",
        "work_order": None,
        "issued_at": make.tick(),
        "confirmed_at": None,
        "updated_at": make.clock,
        "bundle_entry_id": None,
    }


async def _insert(store: Store, values: dict[str, Any]) -> None:
    async with store.engine.begin() as conn:
        await conn.execute(insert(assignments), values)


@pytest.mark.parametrize("status", ["issued", "confirmed", "unknown"])
async def test_database_allows_one_live_assignment_per_key(
    store: Store, make: Any, status: str
) -> None:
    key = make.key()
    await _insert(store, _assignment(make, make.uid(), key, status))
    with pytest.raises(IntegrityError):
        await _insert(store, _assignment(make, make.uid(), key))
    # Dead assignments do not count.
    await _insert(store, _assignment(make, make.uid(), key, "failed"))
    await _insert(store, _assignment(make, make.uid(), key, "superseded"))


async def test_database_allows_one_live_assignment_per_uid(store: Store, make: Any) -> None:
    uid = make.uid()
    await _insert(store, _assignment(make, uid, make.key(), "confirmed"))
    with pytest.raises(IntegrityError):
        await _insert(store, _assignment(make, uid, make.key(), "unknown"))
    await _insert(store, _assignment(make, uid, make.key(), "superseded"))


async def test_database_refuses_duplicate_dacs_and_bad_status(store: Store, make: Any) -> None:
    values = _assignment(make, make.uid(), make.key())
    await _insert(store, values)
    for field in ("dac_serial", "dac_sha256"):
        clash = _assignment(make, make.uid(), make.key())
        clash[field] = values[field]
        with pytest.raises(IntegrityError):
            await _insert(store, clash)
    with pytest.raises(IntegrityError):
        await _insert(store, _assignment(make, make.uid(), make.key(), "lost"))


# --- concurrency -----------------------------------------------------------------------------


def _count_commits(store: Store) -> Counter[str]:
    counts: Counter[str] = Counter()

    @event.listens_for(store.writer.engine.sync_engine, "commit")
    def _on_commit(_conn: Any) -> None:
        counts["commit"] += 1

    return counts


async def test_group_commit_of_many_concurrent_assigns(db_url: str, make: Any) -> None:
    store = await Store.open(db_url, line=make.line, result_payload=result_payload)
    try:
        commits = _count_commits(store)
        requests = [make.request(jig=f"j{i % 40}") for i in range(200)]
        results = await asyncio.gather(*(store.assign(r) for r in requests))
        assert all(r.kind == "issued" for r in results)
        assert len({r.assignment_id for r in results}) == 200
        assert len({r.dac_serial for r in results}) == 200
        assert commits["commit"] < 100, "assigns were not grouped into shared commits"
    finally:
        await store.close()
    # Durable: a new process sees every one.
    store = await Store.open(db_url, line=make.line, result_payload=result_payload)
    try:
        raw_count = await _count(store, "SELECT count(*) FROM assignments WHERE status = 'issued'")
        assert raw_count == 200
        assert await _count(store, "SELECT count(*) FROM attempts WHERE outcome IS NULL") == 200
        assert (
            await _count(store, "SELECT count(DISTINCT public_key_sha256) FROM assignments") == 200
        )
        assert await store.audit().verify_audit_chain() == []
    finally:
        await store.close()


async def _count(store: Store, sql: str) -> int:
    from sqlalchemy import text

    async with store.engine.connect() as conn:
        return int((await conn.execute(text(sql))).scalar_one())


async def test_conflicts_inside_one_batch(store: Store, make: Any, raw: Any) -> None:
    pairs = [(make.request(), make.key()) for _ in range(50)]
    requests = []
    for first, _ in pairs:
        requests.append(first)
        requests.append(make.request(key=first.public_key_sha256))  # same key, other UID
    # Same UID, two keys, in the same batch: the second supersedes the first.
    uid = make.uid()
    requests += [make.request(uid=uid), make.request(uid=uid)]
    results = await asyncio.gather(*(store.assign(r) for r in requests))
    for i in range(50):
        kinds = {results[2 * i].kind, results[2 * i + 1].kind}
        assert kinds == {"issued", "rejected"}
    a, b = results[-2:]
    assert a.kind == b.kind == "issued"
    assert await status_of(raw, a.assignment_id) == "superseded"
    assert await status_of(raw, b.assignment_id) == "issued"
    assert await store.audit().verify_audit_chain() == []


async def test_one_bad_operation_does_not_spoil_its_batch(
    store: Store, make: Any, raw: Any
) -> None:
    taken = make.request()
    await store.assign(taken)
    commits = _count_commits(store)
    good = [make.request() for _ in range(30)]
    key = make.key()
    bad = make.request(key=key, dac=make.dac(key, serial=taken.candidate.serial_hex))
    outcomes = await asyncio.gather(
        *(store.assign(r) for r in [*good[:15], bad, *good[15:]]), return_exceptions=True
    )
    assert isinstance(outcomes[15], DacCollision)
    assert all(isinstance(r, AssignResult) and r.kind == "issued" for r in outcomes[:15])
    assert all(isinstance(r, AssignResult) and r.kind == "issued" for r in outcomes[16:])
    assert await raw.scalar("SELECT count(*) FROM assignments") == 31
    assert commits["commit"] >= 1
    assert await store.audit().verify_audit_chain() == []


async def test_key_taken_by_another_host_between_read_and_write(
    store: Store, make: Any, raw: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    other_uid = make.uid()
    key = make.key()
    await _insert(store, _assignment(make, other_uid, key))  # the other host's commit
    original = batch_module.Batch.load
    hidden = {"times": 1}

    async def stale_load(self: Any, conn: Any, wants: Any) -> None:
        await original(self, conn, wants)
        if hidden["times"] > 0:  # this read missed the other host's row
            hidden["times"] -= 1
            self._by_key.pop(key, None)

    monkeypatch.setattr(batch_module.Batch, "load", stale_load)
    result = await store.assign(make.request(key=key))
    assert result.kind == "rejected"
    assert result.outcome is Outcome.DUPLICATE_KEY
    assert other_uid in result.detail

    hidden["times"] = 99  # a read that never sees it: give up as duplicate_key anyway
    result = await store.assign(make.request(key=key))
    assert result.kind == "rejected"
    assert result.outcome is Outcome.DUPLICATE_KEY
    assert "concurrently" in result.detail
    assert await raw.scalar("SELECT count(*) FROM assignments") == 1
    # The chain is intact; the cross-check rightly flags the row "the other host" wrote raw.
    problems = await store.audit().verify_audit_chain()
    assert len(problems) == 1
    assert "no audit event" in problems[0]


async def test_two_hosts_race_for_the_same_keys(db_url: str, make: Any) -> None:
    host_a = await Store.open(db_url, line="line-a", result_payload=result_payload)
    host_b = await Store.open(db_url, line="line-b", result_payload=result_payload)
    try:
        keys = [make.key() for _ in range(60)]
        reqs_a = [make.request(key=k, line="line-a") for k in keys]
        reqs_b = [make.request(key=k, line="line-b") for k in keys]
        results = await asyncio.gather(
            asyncio.gather(*(host_a.assign(r) for r in reqs_a)),
            asyncio.gather(*(host_b.assign(r) for r in reqs_b)),
        )
        for ra, rb in zip(*results, strict=True):
            assert sorted([ra.kind, rb.kind]) == ["issued", "rejected"]
            rejected = ra if ra.kind == "rejected" else rb
            assert rejected.outcome is Outcome.DUPLICATE_KEY
        live = await _count(host_a, "SELECT count(*) FROM assignments")
        assert live == 60
        assert await host_a.audit().verify_audit_chain() == []
    finally:
        await host_a.close()
        await host_b.close()


# --- the database going away -----------------------------------------------------------------


async def test_unreachable_database_then_retry(
    store: Store, make: Any, raw: Any, tmp_path: Any
) -> None:
    real = store.writer.engine
    if real.dialect.name == "sqlite":
        gone = create_engine(f"sqlite+aiosqlite:///{tmp_path / 'no-such-dir' / 'x.db'}")
    else:
        gone = create_engine("postgresql+asyncpg://postgres@127.0.0.1:1/nothing")
    store.writer.engine = gone
    req = make.request()
    try:
        with pytest.raises(DatabaseUnavailable) as info:
            await store.assign(req)
        assert "\n" not in str(info.value)
        batch = await asyncio.gather(
            *(store.assign(make.request()) for _ in range(5)), return_exceptions=True
        )
        assert all(isinstance(r, DatabaseUnavailable) for r in batch)
    finally:
        store.writer.engine = real
        await gone.dispose()
        await asyncio.sleep(0.1)  # see test_unopenable_sqlite_is_database_unavailable
    result = await store.assign(req)
    assert result.kind == "issued"
    assert await raw.scalar("SELECT count(*) FROM attempts") == 1
    assert await store.audit().verify_audit_chain() == []


async def test_commit_that_succeeded_but_looked_failed(store: Store, make: Any, raw: Any) -> None:
    """The link drops after COMMIT: the caller sees DatabaseUnavailable and retries."""
    armed = {"on": True}

    async def drop_after_commit() -> None:
        if armed["on"]:
            armed["on"] = False
            raise ConnectionResetError("connection reset by peer")  # the chain moved unseen

    store.writer.commit_hook = drop_after_commit
    req = make.request()
    with pytest.raises(DatabaseUnavailable):
        await store.assign(req)
    result = await store.assign(req)
    assert result.kind == "issued"
    end = make.end(assignment_id=result.assignment_id, status=AssignmentStatus.CONFIRMED)
    armed["on"] = True
    with pytest.raises(DatabaseUnavailable):
        await store.end_attempt(req.attempt, end)
    await store.end_attempt(req.attempt, end)
    assert await raw.scalar("SELECT count(*) FROM assignments") == 1
    assert len(await store.pending_results(10)) == 1
    assert await store.audit().verify_audit_chain() == []


async def test_close_finishes_queued_work(db_url: str, make: Any) -> None:
    store = await Store.open(db_url, line=make.line, result_payload=result_payload)
    tasks = [asyncio.create_task(store.assign(make.request())) for _ in range(20)]
    await asyncio.sleep(0)
    await store.close()
    assert all(t.result().kind == "issued" for t in tasks)
    with pytest.raises(StoreError, match="closed"):
        await store.assign(make.request())


async def test_lost_connections_are_replaced(store: Store, make: Any, raw: Any) -> None:
    """The server drops every connection (restart, failover): the next call reconnects."""
    first = await store.assign(make.request())
    if store.engine.dialect.name == "postgresql":
        import asyncpg

        db = store.engine.url.database
        admin = await asyncpg.connect(host="127.0.0.1", user="postgres", database="postgres")
        try:
            await admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = $1 AND pid <> pg_backend_pid()",
                db,
            )
        finally:
            await admin.close()
    else:
        await store.engine.dispose()  # SQLite has no server: drop the pooled connections
        await store.writer.engine.dispose()
    req = make.request()
    for _ in range(3):  # at worst one DatabaseUnavailable; the caller retries
        try:
            result = await store.assign(req)
            break
        except DatabaseUnavailable:
            continue
    assert result.kind == "issued"
    assert result.assignment_id != first.assignment_id
    assert await store.audit().verify_audit_chain() == []


async def test_a_cancelled_writer_fails_its_callers(db_url: str, make: Any) -> None:
    store = await Store.open(db_url, line=make.line, result_payload=result_payload)
    try:
        tasks = [asyncio.create_task(store.assign(make.request())) for _ in range(5)]
        await asyncio.sleep(0)
        store.writer.abort()
        done = await asyncio.gather(*tasks, return_exceptions=True)
        for outcome in done:
            assert isinstance(outcome, AssignResult | StoreError), outcome
        with pytest.raises(StoreError, match="closed"):
            await store.assign(make.request())
    finally:
        await store.close()
