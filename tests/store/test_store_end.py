"""Store.end_attempt, recover_interrupted and the results outbox."""

from __future__ import annotations

import asyncio
import dataclasses
import json
from typing import Any

import pytest

from linehost.errors import StoreError
from linehost.mqtt.payloads import result_payload
from linehost.protocol.outcomes import AssignmentStatus, Outcome
from linehost.store.store import INTERRUPTED_DETAIL, Store

RECORD_FIELDS = [
    "attempt_id",
    "uid",
    "line",
    "station",
    "jig",
    "outcome",
    "detail",
    "device_code",
    "dac_serial",
    "started_at",
    "ended_at",
    "work_order",
    "key_proof",  # issue 17: "csr" (v1) or "none" (ECC608 letters)
    "attest_nonce",
    "attest_signature",
]


async def one_row(raw: Any, sql: str, **params: Any) -> dict[str, Any]:
    found = await raw.rows(sql, **params)
    assert len(found) == 1
    return found[0]


@pytest.mark.parametrize(
    ("outcome", "status", "code"),
    [
        (Outcome.PROVISIONED, AssignmentStatus.CONFIRMED, 0),
        (Outcome.DEVICE_ERROR, AssignmentStatus.FAILED, 3),
        (Outcome.TIMEOUT, AssignmentStatus.UNKNOWN, None),
    ],
)
async def test_end_applies_the_assignment_status(
    store: Store, make: Any, raw: Any, outcome: Outcome, status: AssignmentStatus, code: Any
) -> None:
    req = make.request(work_order="WO-7")
    result = await store.assign(req)
    end = make.end(
        outcome,
        assignment_id=result.assignment_id,
        status=status,
        detail="finish:003 parameter error" if code == 3 else "result",
        device_code=code,
        transcript="Init\nStart_provisioning\nUID:ABCD",
    )
    await store.end_attempt(req.attempt, end)
    a = await one_row(raw, "SELECT * FROM assignments WHERE id = :i", i=result.assignment_id)
    assert a["status"] == status.value
    if status is AssignmentStatus.CONFIRMED:
        assert a["confirmed_at"] is not None
    else:
        assert a["confirmed_at"] is None
    t = await one_row(raw, "SELECT * FROM attempts WHERE attempt_id = :a", a=req.attempt.attempt_id)
    assert t["outcome"] == outcome.value
    assert t["device_code"] == code
    assert t["dac_serial"] == result.dac_serial
    assert t["transcript"] == "Init\nStart_provisioning\nUID:ABCD"
    assert t["ended_at"] is not None

    [(_, payload)] = await store.pending_results(10)
    record = json.loads(payload)
    assert list(record) == RECORD_FIELDS
    assert record["outcome"] == outcome.value
    assert record["device_code"] == code
    assert record["dac_serial"] == result.dac_serial
    assert record["work_order"] == "WO-7"
    assert record["line"] == make.line
    assert record["started_at"].endswith("Z")
    assert len(record["ended_at"]) == len("2026-11-22T05:01:02.123456Z")

    events = await raw.rows(
        "SELECT event FROM audit_log WHERE entity_id = :s ORDER BY seq", s=result.dac_serial
    )
    assert [e["event"] for e in events] == ["assignment_issued", f"assignment_{status.value}"]


async def test_end_without_status_leaves_no_assignment_issued(
    store: Store, make: Any, raw: Any
) -> None:
    req = make.request()
    result = await store.assign(req)
    await store.end_attempt(req.attempt, make.end(Outcome.DISCONNECTED))  # no id, no status
    status = await raw.scalar(
        "SELECT status FROM assignments WHERE id = :i", i=result.assignment_id
    )
    assert status == "unknown"


@pytest.mark.parametrize(
    ("outcome", "detail"),
    [
        (Outcome.TIMEOUT, "csr"),
        (Outcome.CSR_REJECTED, "not P-256"),
        (Outcome.PROTOCOL_ERROR, "line too long"),
        (Outcome.ISSUER_ERROR, "no bundle entry"),
    ],
)
async def test_end_before_any_assignment_inserts_the_whole_attempt(
    store: Store, make: Any, raw: Any, outcome: Outcome, detail: str
) -> None:
    start = make.start(work_order="WO-1")
    if outcome is Outcome.PROTOCOL_ERROR:
        start = dataclasses.replace(start, uid=None)
    await store.end_attempt(start, make.end(outcome, detail=detail, transcript="x" * 1000))
    t = await one_row(raw, "SELECT * FROM attempts WHERE attempt_id = :a", a=start.attempt_id)
    assert t["outcome"] == outcome.value
    assert t["detail"] == detail
    assert t["uid"] == start.uid
    assert t["station"] == start.station
    assert t["work_order"] == "WO-1"
    assert t["assignment_id"] is None
    assert len(t["transcript"]) == 1000
    [(_, payload)] = await store.pending_results(10)
    assert json.loads(payload)["uid"] == start.uid
    assert await store.audit().verify_audit_chain() == []


async def test_end_is_idempotent(store: Store, make: Any, raw: Any) -> None:
    req = make.request()
    result = await store.assign(req)
    end = make.end(assignment_id=result.assignment_id, status=AssignmentStatus.CONFIRMED)
    await store.end_attempt(req.attempt, end)
    await store.end_attempt(req.attempt, end)
    later = make.end(Outcome.DISCONNECTED, assignment_id=result.assignment_id)
    await store.end_attempt(req.attempt, later)  # an ended attempt stays as it ended
    t = await one_row(raw, "SELECT * FROM attempts WHERE attempt_id = :a", a=req.attempt.attempt_id)
    assert t["outcome"] == "provisioned"
    assert len(await store.pending_results(10)) == 1
    assert await raw.scalar("SELECT count(*) FROM audit_log") == 4


async def test_failed_redelivery_keeps_a_confirmed_dac_confirmed(
    store: Store, make: Any, raw: Any
) -> None:
    first = make.request()
    issued = await store.assign(first)
    confirmed = make.end(assignment_id=issued.assignment_id, status=AssignmentStatus.CONFIRMED)
    await store.end_attempt(first.attempt, confirmed)
    again = make.request(uid=first.attempt.uid, key=first.public_key_sha256)
    redelivered = await store.assign(again)
    assert redelivered.kind == "redelivered"
    failed = make.end(
        Outcome.DEVICE_ERROR,
        assignment_id=redelivered.assignment_id,
        status=AssignmentStatus.FAILED,
        device_code=2,
    )
    await store.end_attempt(again.attempt, failed)
    status = await raw.scalar(
        "SELECT status FROM assignments WHERE id = :i", i=issued.assignment_id
    )
    assert status == "confirmed"
    t = await one_row(
        raw, "SELECT * FROM attempts WHERE attempt_id = :a", a=again.attempt.attempt_id
    )
    assert t["outcome"] == "device_error"
    assert t["dac_serial"] == issued.dac_serial


async def test_unknown_then_confirmed_after_redelivery(store: Store, make: Any, raw: Any) -> None:
    first = make.request()
    issued = await store.assign(first)
    await store.end_attempt(
        first.attempt,
        make.end(Outcome.TIMEOUT, assignment_id=issued.assignment_id, status="unknown"),
    )
    again = make.request(uid=first.attempt.uid, key=first.public_key_sha256)
    redelivered = await store.assign(again)
    await store.end_attempt(
        again.attempt,
        make.end(assignment_id=redelivered.assignment_id, status=AssignmentStatus.CONFIRMED),
    )
    status = await raw.scalar(
        "SELECT status FROM assignments WHERE id = :i", i=issued.assignment_id
    )
    assert status == "confirmed"
    assert await store.audit().verify_audit_chain() == []


async def test_end_checks_its_input(store: Store, make: Any) -> None:
    start = make.start()
    with pytest.raises(ValueError, match="superseded"):
        await store.end_attempt(start, make.end(status=AssignmentStatus.SUPERSEDED))
    with pytest.raises(ValueError, match="line"):
        await store.end_attempt(make.start(line="line-9"), make.end())
    naive = dataclasses.replace(make.end(), ended_at=make.clock.replace(tzinfo=None))
    with pytest.raises(ValueError, match="timezone"):
        await store.end_attempt(start, naive)
    with pytest.raises(StoreError, match="no assignment 424242"):
        await store.end_attempt(start, make.end(assignment_id=424242))


# --- recovery --------------------------------------------------------------------------------


async def test_recover_interrupted(db_url: str, make: Any) -> None:
    store = await Store.open(db_url, line=make.line, result_payload=result_payload)
    running = [make.request() for _ in range(3)]
    results = [await store.assign(r) for r in running]
    done = make.request()
    done_result = await store.assign(done)
    await store.end_attempt(
        done.attempt, make.end(assignment_id=done_result.assignment_id, status="confirmed")
    )
    await store.end_attempt(
        running[2].attempt,
        make.end(Outcome.TIMEOUT, assignment_id=results[2].assignment_id, status="unknown"),
    )
    running = running[:2]
    await store.close()  # "crash" with two attempts running

    other_line = await Store.open(db_url, line="line-b", result_payload=result_payload)
    other_req = make.request(line="line-b")
    await other_line.assign(other_req)
    assert await other_line.recover_interrupted(make.tick()) == 1  # its own attempt only
    await other_line.close()

    store = await Store.open(db_url, line=make.line, result_payload=result_payload)
    try:
        now = make.tick()
        assert await store.recover_interrupted(now) == 2
        assert await store.recover_interrupted(now) == 0
        audit = store.audit()
        by_id = {r["attempt_id"]: r async for r in audit.iter_attempt_records()}
        for req in running:
            record = by_id[req.attempt.attempt_id]
            assert record["outcome"] == "disconnected"
            assert record["detail"] == INTERRUPTED_DETAIL
            assert record["ended_at"] == now.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        statuses = {r["dac_serial"]: r["status"] async for r in audit.iter_assignment_records()}
        assert statuses[results[0].dac_serial] == "unknown"
        assert statuses[results[1].dac_serial] == "unknown"
        assert statuses[done_result.dac_serial] == "confirmed"
        outcomes = [json.loads(p)["outcome"] for _, p in await store.pending_results(100)]
        assert outcomes == ["provisioned", "timeout", "disconnected", "disconnected"]
        assert await audit.verify_audit_chain() == []
    finally:
        await store.close()


# --- outbox ----------------------------------------------------------------------------------


async def test_outbox_order_and_mark_sent(store: Store, make: Any) -> None:
    starts = [make.start() for _ in range(10)]
    for start in starts:
        await store.end_attempt(start, make.end(Outcome.TIMEOUT, detail="csr"))
    pending = await store.pending_results(4)
    assert [json.loads(p)["attempt_id"] for _, p in pending] == [s.attempt_id for s in starts[:4]]
    ids = [i for i, _ in pending]
    assert ids == sorted(ids)
    await store.mark_results_sent(ids[:3], make.tick())
    rest = await store.pending_results(100)
    assert [json.loads(p)["attempt_id"] for _, p in rest] == [s.attempt_id for s in starts[3:]]
    await store.mark_results_sent([i for i, _ in rest], make.tick())
    assert await store.pending_results(100) == []
    await store.mark_results_sent([], make.tick())


async def test_outbox_is_written_with_the_attempt(store: Store, make: Any, raw: Any) -> None:
    """Many concurrent ends: each attempt ended has exactly one results message."""
    starts = [make.start() for _ in range(100)]
    await asyncio.gather(
        *(store.end_attempt(s, make.end(Outcome.CSR_REJECTED, detail="bad")) for s in starts)
    )
    pending = await store.pending_results(1000)
    assert len(pending) == 100
    assert {json.loads(p)["attempt_id"] for _, p in pending} == {s.attempt_id for s in starts}
    ended = await raw.scalar("SELECT count(*) FROM attempts WHERE outcome IS NOT NULL")
    assert ended == 100


async def test_outbox_is_per_line(db_url: str, make: Any) -> None:
    a = await Store.open(db_url, line="line-a", result_payload=result_payload)
    b = await Store.open(db_url, line="line-b", result_payload=result_payload)
    try:
        await a.end_attempt(make.start(line="line-a"), make.end(Outcome.TIMEOUT))
        await b.end_attempt(make.start(line="line-b"), make.end(Outcome.TIMEOUT))
        [(id_a, pa)] = await a.pending_results(10)
        [(id_b, _)] = await b.pending_results(10)
        assert json.loads(pa)["line"] == "line-a"
        await a.mark_results_sent([id_a, id_b], make.tick())  # b's is not a's to mark
        assert await a.pending_results(10) == []
        assert len(await b.pending_results(10)) == 1
    finally:
        await a.close()
        await b.close()
