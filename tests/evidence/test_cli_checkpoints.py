"""`linehost audit verify --checkpoints` as an auditor runs it, on SQLite and PostgreSQL, against
a database administrator who rewrites the audit log with the public algorithm."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select, text
from sqlalchemy.ext.asyncio import AsyncEngine

from linehost.evidence.checkpoint import generate_key_pair, open_audit_key, sign_checkpoint
from linehost.evidence.checkpointer import Checkpointer
from linehost.protocol.outcomes import Outcome
from linehost.records import iso_utc
from linehost.store.chain import GENESIS_HASH, row_hash
from linehost.store.engine import create_engine
from linehost.store.models import audit_log
from tests.e2e.harness import linehost
from tests.store.realdacs import Device, dev_pki, provision, write_config

pytestmark = pytest.mark.timeout(180)

OK, DEVERR = Outcome.PROVISIONED, Outcome.DEVICE_ERROR
LINE = "line-a"


@dataclass
class Setup:
    config: Path
    checkpoints: Path
    pubkey: Path
    devices: list[Device]
    engine: AsyncEngine

    async def verify(self, *extra: str | Path) -> Any:
        args = ["audit", "--config", self.config, "verify", *extra]
        return await asyncio.to_thread(linehost, *args, check=False)

    async def verify_checkpoints(self) -> Any:
        return await self.verify("--checkpoints", self.checkpoints, "--audit-pubkey", self.pubkey)


@pytest.fixture
async def setup(db_url: str, tmp_path: Path) -> AsyncIterator[Setup]:
    """Three rounds of devices, a checkpoint after each (the way `linehost run` makes them)."""
    pki = dev_pki(tmp_path / "pki")
    key_path, pub_path, _ = generate_key_pair(tmp_path / "audit-key")
    directory = tmp_path / "checkpoints"
    engine = create_engine(db_url)
    devices: list[Device] = []
    for places in ([("st1", "j1", OK), ("st1", "j2", DEVERR)], [("st2", "j3", OK)],
                   [("st2", "j4", OK), ("st1", "j1", OK)]):  # fmt: skip
        devices += await provision(db_url, pki, LINE, places)
        checkpointer = Checkpointer(
            engine, LINE, open_audit_key(str(key_path)), directory, every=1000, interval=60
        )
        await checkpointer.start()
        await checkpointer.close()  # the final checkpoint of what is committed
        assert checkpointer.made == 1
    assert len(list(directory.glob("*.json"))) == 3
    try:
        yield Setup(write_config(tmp_path / "audit.toml", pki, db_url), directory, pub_path,
                    devices, engine)  # fmt: skip
    finally:
        await engine.dispose()


async def execute(engine: AsyncEngine, sql: str, **params: Any) -> None:
    async with engine.begin() as conn:
        await conn.execute(text(sql), params)


async def rebuild_chain(engine: AsyncEngine, line: str) -> None:
    """What an attacker does with linehost/store/chain.py: renumber and re-hash every row."""
    async with engine.begin() as conn:
        rows = (
            (
                await conn.execute(
                    select(audit_log).where(audit_log.c.line == line).order_by(audit_log.c.seq)
                )
            )
            .mappings()
            .all()
        )
        await conn.execute(text("UPDATE audit_log SET seq = -seq WHERE line = :l"), {"l": line})
        prev = GENESIS_HASH
        for seq, row in enumerate(rows, start=1):
            digest = row_hash(
                prev, seq=seq, line=line, at=iso_utc(row["at"]) or "", entity=row["entity"],
                entity_id=row["entity_id"], event=row["event"], data=json.loads(row["data"]),
            )  # fmt: skip
            await conn.execute(
                text("UPDATE audit_log SET seq = :s, prev_hash = :p, row_hash = :h WHERE id = :i"),
                {"s": seq, "p": prev, "h": digest, "i": row["id"]},
            )
            prev = digest


async def test_untouched_database_passes(setup: Setup) -> None:
    plain = await setup.verify()
    assert plain.returncode == 0, plain.stdout + plain.stderr
    assert "checked the database against itself only" in plain.stdout
    done = await setup.verify_checkpoints()
    assert done.returncode == 0, done.stdout + done.stderr
    assert "3 signed checkpoint(s) hold" in done.stdout
    assert "FAIL" not in done.stdout


async def test_device_erased_and_chain_rebuilt_is_detected(setup: Setup) -> None:
    victim = setup.devices[0]  # in the first checkpoint already
    serial = victim.dac_serial
    attempts = f"SELECT attempt_id FROM attempts WHERE uid = '{victim.uid}'"
    await execute(setup.engine, f"DELETE FROM audit_log WHERE entity_id = '{serial}' OR "
                  f"entity_id IN ({attempts})")  # fmt: skip
    await execute(setup.engine, f"DELETE FROM outbox WHERE payload LIKE '%{victim.uid}%'")
    await execute(setup.engine, f"DELETE FROM attempts WHERE uid = '{victim.uid}'")
    await execute(setup.engine, f"DELETE FROM assignments WHERE uid = '{victim.uid}'")
    await rebuild_chain(setup.engine, LINE)
    fooled = await setup.verify()
    assert fooled.returncode == 0, fooled.stdout  # what issue 14 is about
    caught = await setup.verify_checkpoints()
    assert caught.returncode == 1, caught.stdout
    fails = [x for x in caught.stdout.splitlines() if x.startswith("FAIL")]
    assert any("do not reproduce the root" in x for x in fails), caught.stdout
    assert all(f"line '{LINE}'" in x for x in fails), caught.stdout


async def test_row_edited_and_whole_chain_recomputed_is_detected(setup: Setup) -> None:
    await execute(setup.engine, "UPDATE audit_log SET data = REPLACE(data, '\"st1\"', '\"st9\"') "
                  f"WHERE line = '{LINE}' AND seq = 1")  # fmt: skip
    await rebuild_chain(setup.engine, LINE)
    assert (await setup.verify()).returncode == 0
    caught = await setup.verify_checkpoints()
    assert caught.returncode == 1
    fails = [x for x in caught.stdout.splitlines() if x.startswith("FAIL")]
    assert len(fails) >= 3, caught.stdout  # every checkpoint covers seq 1
    assert all("do not reproduce the root" in x or "head of" in x or "not consistent" in x
               for x in fails), caught.stdout  # fmt: skip


async def test_newest_five_rows_deleted_is_detected(setup: Setup) -> None:
    await execute(setup.engine, f"DELETE FROM audit_log WHERE line = '{LINE}' AND seq > "
                  f"(SELECT MAX(seq) - 5 FROM audit_log WHERE line = '{LINE}')")  # fmt: skip
    caught = await setup.verify_checkpoints()
    assert caught.returncode == 1
    assert "rows were deleted from the end (tail truncation)" in caught.stdout, caught.stdout


async def test_checkpoint_file_altered_or_signed_by_another_key_is_detected(
    setup: Setup, tmp_path: Path
) -> None:
    first, second, third = sorted(setup.checkpoints.glob("*.json"))
    value = json.loads(first.read_text())
    value["root_hash"] = "0" * 64
    first.write_text(json.dumps(value))
    other_key, _, _ = generate_key_pair(tmp_path / "other-key")
    forged = json.loads(second.read_text())
    signed = await sign_checkpoint(open_audit_key(str(other_key)), forged)
    second.write_text(json.dumps(signed.as_json()))
    caught = await setup.verify_checkpoints()
    assert caught.returncode == 1
    assert f"FAIL checkpoint file {first.name}: signature does not verify" in caught.stdout
    assert f"FAIL checkpoint file {second.name}: signed by another key" in caught.stdout
    assert third.name not in caught.stdout


async def test_verify_needs_both_arguments(setup: Setup) -> None:
    half = await setup.verify("--checkpoints", setup.checkpoints)
    assert half.returncode == 2
    assert "--checkpoints needs --audit-pubkey" in half.stderr
    assert "Traceback" not in half.stderr


async def test_checkpoint_file_removed_or_forked_is_detected(setup: Setup, tmp_path: Path) -> None:
    _, second, third = sorted(setup.checkpoints.glob("*.json"))
    assert (
        json.loads(third.read_text())["consistency"]["from_size"]
        == json.loads(second.read_text())["tree_size"]
    )
    second.unlink()
    caught = await setup.verify_checkpoints()
    assert caught.returncode == 1
    assert f"{third.name} follows a checkpoint of size" in caught.stdout, caught.stdout
    assert "a checkpoint file was removed" in caught.stdout


@pytest.mark.slow
async def test_prove_by_serial_and_check_it_offline(setup: Setup, tmp_path: Path) -> None:
    device = setup.devices[-1]
    assert device.dac_serial is not None
    out = tmp_path / "proof.json"
    made = await asyncio.to_thread(
        linehost, "audit", "--config", setup.config, "prove", "--serial", device.dac_serial,
        "--out", out, check=False,
    )  # fmt: skip
    assert made.returncode == 0, made.stdout + made.stderr
    ok = await asyncio.to_thread(
        linehost, "audit", "check-proof", out, "--audit-pubkey", setup.pubkey, check=False
    )
    assert ok.returncode == 0, ok.stdout
    assert "check-proof: OK — 1 assignment record(s) of line 'line-a'" in ok.stdout
    again = await asyncio.to_thread(
        linehost, "audit", "--config", setup.config, "prove", "--serial", device.dac_serial,
        "--out", out, check=False,
    )  # fmt: skip
    assert again.returncode == 2
    assert "exists already" in again.stderr
    unknown = await asyncio.to_thread(
        linehost, "audit", "--config", setup.config, "prove", "--uid", "00FF00FF00FF00FF",
        "--out", tmp_path / "none.json", check=False,
    )  # fmt: skip
    assert unknown.returncode == 1
    assert unknown.stderr.strip() == "linehost: error: no assignment for UID 00FF00FF00FF00FF"
    no_config = await asyncio.to_thread(linehost, "audit", "prove", "--uid", "00", "--out",
                                        tmp_path / "x.json", check=False)  # fmt: skip
    assert no_config.returncode == 2
    assert "--config FILE is required" in no_config.stderr
