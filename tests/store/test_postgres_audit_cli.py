"""`linehost audit` as an auditor runs it (a subprocess), on SQLite and on PostgreSQL: `verify`
finds an edited, a deleted and an inserted audit row by id; the record filters select."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import insert, select, text
from sqlalchemy.ext.asyncio import AsyncEngine

from linehost.cli import main
from linehost.protocol.outcomes import Outcome
from linehost.records import iso_utc
from linehost.store.chain import row_hash
from linehost.store.engine import create_engine
from linehost.store.models import audit_log
from tests.e2e.harness import jsonl, linehost
from tests.store.realdacs import Device, dev_pki, provision, write_config

pytestmark = pytest.mark.timeout(180)

OK, DEVERR = Outcome.PROVISIONED, Outcome.DEVICE_ERROR


async def cli(*args: str | Path) -> Any:
    """`linehost ...` off the event loop (the database fixtures are async)."""
    return await asyncio.to_thread(linehost, *args, check=False)


@pytest.fixture
async def engine(db_url: str) -> AsyncIterator[AsyncEngine]:
    e = create_engine(db_url)
    try:
        yield e
    finally:
        await e.dispose()


async def rows(engine: AsyncEngine, sql: str, **params: Any) -> list[dict[str, Any]]:
    async with engine.connect() as conn:
        return [dict(r) for r in (await conn.execute(text(sql), params)).mappings()]


async def execute(engine: AsyncEngine, sql: str, **params: Any) -> None:
    async with engine.begin() as conn:
        await conn.execute(text(sql), params)


async def two_lines(db_url: str, tmp_path: Path) -> tuple[Path, list[Device]]:
    pki = dev_pki(tmp_path / "pki")
    a = await provision(db_url, pki, "line-a", [("st1", "j1", OK), ("st2", "j3", OK)])
    b = await provision(db_url, pki, "line-b", [("st1", "j1", OK), ("st1", "j2", DEVERR)])
    return write_config(tmp_path / "audit.toml", pki, db_url), a + b


@pytest.mark.slow
async def test_verify_cli_finds_edited_deleted_and_inserted_rows(
    db_url: str, engine: AsyncEngine, tmp_path: Path
) -> None:
    config, _ = await two_lines(db_url, tmp_path)
    intact = await cli("audit", "--config", config, "verify")
    assert intact.returncode == 0, intact.stdout + intact.stderr
    assert "audit verify: OK — 4 DAC(s)" in intact.stdout
    async with engine.connect() as conn:  # typed: `at` comes back as an aware datetime
        stmt = select(audit_log).where(audit_log.c.line == "line-b").order_by(audit_log.c.seq)
        chain = [dict(r) for r in (await conn.execute(stmt)).mappings()]
    assert len(chain) >= 5
    victim = chain[2]

    # edited: one field of one row, its stored hash left as it was
    await execute(
        engine, "UPDATE audit_log SET event = 'attempt_started' WHERE id = :i", i=victim["id"]
    )
    edited = await cli("audit", "--config", config, "verify")
    assert edited.returncode == 1
    assert f"line 'line-b': row id={victim['id']} (seq 3) hash mismatch" in edited.stdout
    assert "'line-a'" not in edited.stdout  # chains are per line: the other one is intact
    await execute(engine, "UPDATE audit_log SET event = :e WHERE id = :i", e=victim["event"],
                  i=victim["id"])  # fmt: skip
    assert (await cli("audit", "--config", config, "verify")).returncode == 0

    # deleted: the next row no longer follows on
    await execute(engine, "DELETE FROM audit_log WHERE id = :i", i=victim["id"])
    deleted = await cli("audit", "--config", config, "verify")
    assert deleted.returncode == 1
    assert f"row id={chain[3]['id']} has seq 4, expected 3: a row was deleted" in deleted.stdout
    async with engine.begin() as conn:
        await conn.execute(insert(audit_log).values(**victim))
    assert (await cli("audit", "--config", config, "verify")).returncode == 0

    # inserted: a careful forger renumbers the tail and hashes the new row correctly
    await execute(
        engine, "UPDATE audit_log SET seq = -(seq + 1) WHERE line = 'line-b' AND seq >= 3"
    )
    await execute(engine, "UPDATE audit_log SET seq = -seq WHERE seq < 0")
    data = {"outcome": "provisioned", "uid": "0123456789ABCDEF"}
    forged = {
        "line": "line-b",
        "seq": 3,
        "at": chain[1]["at"],
        "entity": "attempt",
        "entity_id": "00000000-0000-4000-8000-000000000000",
        "event": "attempt_ended",
        "data": json.dumps(data, sort_keys=True, separators=(",", ":")),
        "prev_hash": chain[1]["row_hash"],
    }
    forged["row_hash"] = row_hash(
        chain[1]["row_hash"],
        seq=3,
        line="line-b",
        at=iso_utc(chain[1]["at"]) or "",
        entity="attempt",
        entity_id=str(forged["entity_id"]),
        event="attempt_ended",
        data=data,
    )
    async with engine.begin() as conn:
        await conn.execute(insert(audit_log).values(**forged))
    forged_id = (await rows(engine, "SELECT max(id) AS i FROM audit_log"))[0]["i"]
    inserted = await cli("audit", "--config", config, "verify")
    assert inserted.returncode == 1
    assert (
        f"row id={victim['id']} (seq 4) prev_hash does not match row id={forged_id}"
        in inserted.stdout
    ), inserted.stdout
    assert "deleted or inserted" in inserted.stdout
    # the forged attempt has no row in `attempts`: the cross-check names it too
    assert f"attempt {forged['entity_id']} is in the audit log but not" in inserted.stdout


def test_record_filters_through_the_cli(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The flags reach the queries (the queries themselves: test_store_audit.py, both engines)."""
    # In-process: keep the test session's logging (main would bind it to captured stderr).
    monkeypatch.setattr("linehost.logs.configure_logging", lambda *args, **kwargs: None)
    url = f"sqlite+aiosqlite:///{tmp_path / 'linehost.db'}"
    config, devices = asyncio.run(two_lines(url, tmp_path))

    def export(*args: str) -> list[dict[str, Any]]:
        capsys.readouterr()
        code = main(["audit", "--config", str(config), *args, "--format", "jsonl"])
        out = capsys.readouterr()
        assert code == 0, out.err
        return jsonl(out.out)

    everything = export("export")
    assert {r["uid"] for r in everything} == {d.uid for d in devices}
    st2 = export("export", "--station", "st2")
    assert [r["uid"] for r in st2] == [devices[1].uid]
    j1 = export("export", "--jig", "j1")
    assert {r["uid"] for r in j1} == {devices[0].uid, devices[2].uid}
    failed = export("export", "--status", "failed")
    assert [r["uid"] for r in failed] == [devices[3].uid]
    # each line's devices were issued at T0 and T0 + 1 min: the window takes both T0 ones
    first = iso_utc(devices[0].issued_at) or ""
    window = export("export", "--since", first, "--until", "2026-11-22T06:01")
    assert {r["uid"] for r in window} == {devices[0].uid, devices[2].uid}
    errors = export("attempts", "--outcome", "device_error")
    assert [(r["uid"], r["device_code"]) for r in errors] == [(devices[3].uid, 1)]
    assert export("attempts", "--outcome", "timeout", "--station", "st1") == []
