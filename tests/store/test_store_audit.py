"""Audit queries: exports with filters, histories, and tamper detection with raw SQL."""

from __future__ import annotations

import hashlib
import json
from datetime import datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import insert, select, text

from linehost.errors import StoreError
from linehost.mqtt.payloads import result_payload
from linehost.protocol.outcomes import AssignmentStatus, Outcome
from linehost.records import iso_utc
from linehost.store.audit import Audit
from linehost.store.chain import CommittedRow, row_hash
from linehost.store.models import attempts, audit_log
from linehost.store.store import Store
from tests.store.conftest import Factory

EXPORT_FIELDS = [
    "uid",
    "status",
    "dac_serial",
    "dac_sha256",
    "dac_pem",
    "pai_sha256",
    "vid",
    "pid",
    "line",
    "station",
    "jig",
    "attempt_id",
    "issued_at",
    "confirmed_at",
    "work_order",
    "revoked_at",  # issue 13: added, contract fields kept
    "revocation_reason",
    "key_proof",  # issue 17: csr or none
    "cd_sha256",  # issue 13 item 6: the CD delivered with the DAC
]


async def audit_row(store: Store, seq: int) -> dict[str, Any]:
    """An audit row with typed columns (raw SQL would return SQLite's text timestamps)."""
    async with store.engine.connect() as conn:
        stmt = select(audit_log).where(audit_log.c.seq == seq)
        return dict((await conn.execute(stmt)).mappings().one())


async def provision(store: Store, make: Any, **kw: Any) -> tuple[Any, Any]:
    """One device through issue and confirm."""
    req = make.request(**kw)
    result = await store.assign(req)
    await store.end_attempt(
        req.attempt,
        make.end(assignment_id=result.assignment_id, status=AssignmentStatus.CONFIRMED),
    )
    return req, result


@pytest.fixture
async def history(store: Store, make: Any) -> dict[str, Any]:
    """A small line history: confirmed, failed, rejected and still-running attempts."""
    store.writer.clock = make.tick
    ok = [await provision(store, make, station="st1", jig=f"j{i}") for i in range(3)]
    failed_req = make.request(station="st2", jig="j1")
    failed = await store.assign(failed_req)
    await store.end_attempt(
        failed_req.attempt,
        make.end(
            Outcome.DEVICE_ERROR,
            assignment_id=failed.assignment_id,
            status=AssignmentStatus.FAILED,
            device_code=1,
        ),
    )
    dup = make.request(key=ok[0][0].public_key_sha256, station="st2", jig="j2")
    await store.assign(dup)
    running = make.request(station="st2", jig="j2")
    await store.assign(running)
    return {"ok": ok, "failed": (failed_req, failed), "dup": dup, "running": running}


# --- exports ---------------------------------------------------------------------------------


async def test_export_records(store: Store, history: dict[str, Any]) -> None:
    records = [r async for r in store.audit().iter_assignment_records()]
    assert len(records) == 5
    assert all(list(r) == EXPORT_FIELDS for r in records)
    statuses = [r["status"] for r in records]
    assert statuses == ["confirmed", "confirmed", "confirmed", "failed", "issued"]
    req, result = history["ok"][0]
    first = records[0]
    assert first["uid"] == req.attempt.uid
    assert first["dac_serial"] == result.dac_serial
    assert first["dac_sha256"] == req.candidate.sha256
    assert first["dac_pem"] == req.candidate.pem
    assert first["attempt_id"] == req.attempt.attempt_id
    assert first["issued_at"].endswith("Z")
    assert first["confirmed_at"].endswith("Z")
    assert records[-1]["confirmed_at"] is None
    json.dumps(records)  # plain JSON types only


async def test_export_filters(store: Store, make: Any, history: dict[str, Any]) -> None:
    audit = store.audit()

    async def serials(**kw: Any) -> list[str]:
        return [r["dac_serial"] async for r in audit.iter_assignment_records(**kw)]

    assert len(await serials(station="st1")) == 3
    assert len(await serials(station="st1", jig="j1")) == 1
    assert await serials(status="failed") == [history["failed"][1].dac_serial]
    assert len(await serials(line=make.line)) == 5
    assert await serials(line="elsewhere") == []
    everything = [r async for r in audit.iter_assignment_records()]
    cut = everything[2]["issued_at"]
    moment = datetime.fromisoformat(cut.replace("Z", "+00:00"))
    assert len(await serials(since=moment)) == 3
    assert len(await serials(until=moment)) == 2
    assert len(await serials(since=moment, until=moment + timedelta(microseconds=1))) == 1


async def test_attempt_records_and_filters(store: Store, history: dict[str, Any]) -> None:
    audit = store.audit()
    records = [r async for r in audit.iter_attempt_records()]
    assert len(records) == 6
    assert [r["outcome"] for r in records] == [
        "provisioned",
        "provisioned",
        "provisioned",
        "device_error",
        "duplicate_key",
        None,
    ]
    dup = [r async for r in audit.iter_attempt_records(outcome="duplicate_key")]
    assert [r["attempt_id"] for r in dup] == [history["dup"].attempt.attempt_id]
    st2 = [r async for r in audit.iter_attempt_records(station="st2", jig="j2")]
    assert len(st2) == 2
    assert records[3]["device_code"] == 1
    since = records[4]["started_at"]
    moment = datetime.fromisoformat(since.replace("Z", "+00:00"))
    assert len([r async for r in audit.iter_attempt_records(since=moment)]) == 2


async def test_exports_stream(store: Store, make: Any) -> None:
    for _ in range(30):
        await store.end_attempt(make.start(), make.end(Outcome.TIMEOUT, detail="csr"))
    audit = store.audit()
    seen = 0
    async for _record in audit.iter_attempt_records():
        seen += 1
        if seen == 5:
            break  # leaving early releases the connection
    assert seen == 5
    assert len([r async for r in audit.iter_attempt_records()]) == 30


async def test_uid_history(store: Store, make: Any) -> None:
    store.writer.clock = make.tick
    req, first = await provision(store, make)
    uid = req.attempt.uid
    again = make.request(uid=uid, allow_reprovision=True)
    second = await store.assign(again)
    history = await store.audit().uid_history(uid.lower())
    kinds = [(h["kind"], h.get("status") or h.get("outcome")) for h in history]
    assert kinds == [
        ("attempt", "provisioned"),
        ("assignment", "superseded"),
        ("attempt", None),
        ("assignment", "issued"),
    ]
    assert [h["at"] for h in history] == sorted(h["at"] for h in history)
    assert history[1]["dac_serial"] == first.dac_serial
    assert history[3]["dac_serial"] == second.dac_serial
    assert await store.audit().uid_history("FFFF") == []


async def test_dac_lookup(store: Store, make: Any) -> None:
    req, result = await provision(store, make)
    audit = store.audit()
    by_serial = await audit.dac_lookup(result.dac_serial.lower())
    assert by_serial is not None
    assert by_serial["assignment"]["dac_serial"] == result.dac_serial
    assert [a["attempt_id"] for a in by_serial["attempts"]] == [req.attempt.attempt_id]
    assert [e["event"] for e in by_serial["events"]] == [
        "assignment_issued",
        "assignment_confirmed",
    ]
    assert await audit.dac_lookup("0x00" + result.dac_serial) == by_serial
    assert await audit.dac_lookup(req.candidate.sha256.upper()) == by_serial
    assert await audit.dac_lookup("ABCDEF") is None
    with pytest.raises(StoreError, match="neither"):
        await audit.dac_lookup("not-hex")


async def test_audit_open_needs_current_schema(db_url: str) -> None:
    with pytest.raises(StoreError, match="db upgrade"):
        await Audit.open(db_url)
    store = await Store.open(db_url, line="line-1", result_payload=result_payload)
    await store.close()
    audit = await Audit.open(db_url)
    try:
        assert await audit.verify_audit_chain() == []
    finally:
        await audit.close()


# --- tamper detection ------------------------------------------------------------------------


async def test_intact_chain_verifies(store: Store, history: dict[str, Any]) -> None:
    assert await store.audit().verify_audit_chain() == []


@pytest.mark.parametrize(
    ("column", "sql"),
    [
        ("data", "data = REPLACE(data, 'provisioned', 'device_error')"),
        ("entity_id", "entity_id = 'someone-else'"),
        ("at", "at = (SELECT at FROM audit_log WHERE seq = 1)"),
    ],
)
async def test_chain_detects_an_edited_row(
    store: Store, history: dict[str, Any], raw: Any, column: str, sql: str
) -> None:
    victim = await raw.scalar("SELECT id FROM audit_log WHERE seq = 3")
    await raw.execute(f"UPDATE audit_log SET {sql} WHERE id = :i", i=victim)
    problems = await store.audit().verify_audit_chain(cross_check=False)
    assert len(problems) == 1, column
    assert f"row id={victim} (seq 3) hash mismatch" in problems[0]
    assert "edited" in problems[0]


async def test_chain_detects_an_edited_and_rehashed_row(
    store: Store, history: dict[str, Any], raw: Any
) -> None:
    row = await audit_row(store, 3)
    forged_data = {**json.loads(row["data"]), "outcome": "device_error"}
    forged_hash = row_hash(
        row["prev_hash"],
        seq=row["seq"],
        line=row["line"],
        at=iso_utc(row["at"]) or "",
        entity=row["entity"],
        entity_id=row["entity_id"],
        event=row["event"],
        data=forged_data,
    )
    await raw.execute(
        "UPDATE audit_log SET data = :d, row_hash = :h WHERE id = :i",
        d=json.dumps(forged_data, sort_keys=True, separators=(",", ":")),
        h=forged_hash,
        i=row["id"],
    )
    problems = await store.audit().verify_audit_chain(cross_check=False)
    next_id = await raw.scalar("SELECT id FROM audit_log WHERE seq = 4")
    assert len(problems) == 1
    assert f"row id={next_id}" in problems[0]
    assert f"row id={row['id']}" in problems[0]


async def test_chain_detects_a_deleted_row(store: Store, history: dict[str, Any], raw: Any) -> None:
    await raw.execute("DELETE FROM audit_log WHERE seq = 4")
    after = await raw.scalar("SELECT id FROM audit_log WHERE seq = 5")
    problems = await store.audit().verify_audit_chain(cross_check=False)
    assert len(problems) == 1
    assert f"row id={after}" in problems[0]
    assert "has seq 5, expected 4" in problems[0]
    assert "deleted or inserted" in problems[0]


async def test_chain_detects_an_inserted_row(
    store: Store, history: dict[str, Any], raw: Any
) -> None:
    top = (await raw.rows("SELECT * FROM audit_log ORDER BY seq DESC LIMIT 1"))[0]
    # Renumber the tail to make room in the middle (seq is part of every hash: edits show too).
    # Simpler and nastier: append a forged row chained to an older row than the head.
    older = (await raw.rows("SELECT * FROM audit_log WHERE seq = 2"))[0]
    await raw.execute(
        "INSERT INTO audit_log (line, seq, at, entity, entity_id, event, data, prev_hash, "
        "row_hash) VALUES (:line, :seq, :at, 'assignment', 'FFFF', 'assignment_confirmed', "
        "'{}', :prev, :hash)",
        line=top["line"],
        seq=top["seq"] + 1,
        at=top["at"],
        prev=older["row_hash"],
        hash="0" * 64,
    )
    problems = await store.audit().verify_audit_chain(cross_check=False)
    forged = await raw.scalar("SELECT max(id) FROM audit_log")
    assert len(problems) == 1
    assert f"row id={forged}" in problems[0]
    assert "prev_hash" in problems[0]
    assert "deleted or inserted" in problems[0]


async def test_chain_detects_an_inserted_row_with_a_seq_gap(
    store: Store, history: dict[str, Any], raw: Any
) -> None:
    top = (await raw.rows("SELECT * FROM audit_log ORDER BY seq DESC LIMIT 1"))[0]
    await raw.execute(
        "INSERT INTO audit_log (line, seq, at, entity, entity_id, event, data, prev_hash, "
        "row_hash) VALUES (:line, :seq, :at, 'attempt', 'x', 'attempt_ended', '{}', :prev, :h)",
        line=top["line"],
        seq=top["seq"] + 7,
        at=top["at"],
        prev=top["row_hash"],
        h="1" * 64,
    )
    problems = await store.audit().verify_audit_chain(cross_check=False)
    assert len(problems) == 1
    assert f"expected {top['seq'] + 1}" in problems[0]


async def test_chain_problems_are_reported_per_line(db_url: str, make: Any) -> None:
    a = await Store.open(db_url, line="line-a", result_payload=result_payload)
    b = await Store.open(db_url, line="line-b", result_payload=result_payload)
    try:
        for _ in range(3):
            await a.end_attempt(make.start(line="line-a"), make.end(Outcome.TIMEOUT))
            await b.end_attempt(make.start(line="line-b"), make.end(Outcome.TIMEOUT))
        async with a.engine.begin() as conn:
            await conn.execute(text("UPDATE audit_log SET event = 'x' WHERE seq IN (2, 5)"))
        problems = await a.audit().verify_audit_chain(cross_check=False)
        assert len(problems) == 2  # the first broken link of each line
        assert "'line-a'" in problems[0]
        assert "(seq 2)" in problems[0]
        assert "'line-b'" in problems[1]
    finally:
        await a.close()
        await b.close()


async def test_writing_continues_the_chain_after_reopen(db_url: str, make: Any) -> None:
    for _ in range(3):
        store = await Store.open(db_url, line=make.line, result_payload=result_payload)
        try:
            await provision(store, make)
        finally:
            await store.close()
    store = await Store.open(db_url, line=make.line, result_payload=result_payload)
    try:
        audit = store.audit()
        assert await audit.verify_audit_chain() == []
        events = [e async for e in audit._stream(_all_events())]
        assert [e["seq"] for e in events] == list(range(1, 13))
    finally:
        await store.close()


def _all_events() -> Any:
    return select(audit_log).order_by(audit_log.c.seq)


# --- the tables against their audit trail ----------------------------------------------------


async def test_cross_check_detects_an_edited_assignment(
    store: Store, history: dict[str, Any], raw: Any
) -> None:
    _, result = history["ok"][1]
    await raw.execute(
        "UPDATE assignments SET status = 'failed' WHERE id = :i", i=result.assignment_id
    )
    problems = await store.audit().verify_audit_chain()
    assert len(problems) == 1
    assert f"assignment id={result.assignment_id}" in problems[0]
    assert "'failed'" in problems[0]
    assert "'confirmed'" in problems[0]


async def test_cross_check_detects_an_edited_attempt(
    store: Store, history: dict[str, Any], raw: Any
) -> None:
    req, _ = history["failed"]
    await raw.execute(
        "UPDATE attempts SET outcome = 'provisioned' WHERE attempt_id = :a",
        a=req.attempt.attempt_id,
    )
    problems = await store.audit().verify_audit_chain()
    assert len(problems) == 1
    assert req.attempt.attempt_id in problems[0]
    assert "outcome" in problems[0]


async def test_cross_check_detects_deleted_and_inserted_rows(
    store: Store, make: Any, history: dict[str, Any], raw: Any
) -> None:
    gone = history["dup"].attempt.attempt_id
    await raw.execute("DELETE FROM attempts WHERE attempt_id = :a", a=gone)
    async with store.engine.begin() as conn:
        await conn.execute(
            insert(attempts).values(
                attempt_id="forged",
                line=make.line,
                station="st1",
                jig="j1",
                uid="ABCDEF01",
                outcome="provisioned",
                detail="",
                started_at=make.tick(),
                ended_at=make.tick(),
                transcript="",
            )
        )
    problems = await store.audit().verify_audit_chain()
    assert len(problems) == 2
    assert any("attempt forged has no audit event" in p for p in problems)
    assert any(gone in p and "deleted" in p for p in problems)


async def test_commit_listeners_hear_each_row_and_cannot_fail_a_commit(
    store: Store, make: Factory, raw: Any
) -> None:
    """The writer tells its listeners every audit row it committed, as written; a listener
    that raises is logged, and the callers still hear that their batch committed."""
    heard: list[CommittedRow] = []

    def broken(rows: Any) -> None:
        raise RuntimeError("listener bug")

    store.writer.add_commit_listener(broken)
    store.writer.add_commit_listener(heard.extend)
    before = await raw.scalar("SELECT count(*) FROM audit_log")
    result = await store.assign(make.request())
    assert result.kind == "issued"
    rows = await raw.rows("SELECT seq, row_hash FROM audit_log ORDER BY seq")
    assert len(rows) > before
    assert [(r.seq, r.row_hash) for r in heard] == [
        (r["seq"], r["row_hash"]) for r in rows[before:]
    ]
    for row in heard:
        assert hashlib.sha256((row.prev_hash + row.body).encode()).hexdigest() == row.row_hash
