"""A work order's Certification Declaration in the store: each new assignment keeps the SHA-256
of the CD sent with its DAC (export, audit event), and a work order keeps the CD and firmware
version it was opened with (on both engines)."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import pytest
from sqlalchemy import select

from linehost.errors import StoreError
from linehost.store.models import audit_log, work_orders
from linehost.store.store import Store

CD = "5e" * 32
OTHER = "a0" * 32


async def test_assignment_records_the_cd_it_was_sent_with(store: Store, make: Any) -> None:
    with_cd = dataclasses.replace(make.request(), cd_sha256=CD)
    without = make.request()
    await store.assign(with_cd)
    await store.assign(without)
    records = {r["uid"]: r async for r in store.audit().iter_assignment_records()}
    assert records[with_cd.attempt.uid]["cd_sha256"] == CD
    assert records[without.attempt.uid]["cd_sha256"] is None
    async with store.engine.connect() as conn:
        rows = (await conn.execute(select(audit_log.c.data).where(
            audit_log.c.event == "assignment_issued"))).all()  # fmt: skip
    events = [json.loads(r.data) for r in rows]
    assert [e.get("cd_sha256") for e in events] == [CD, None]


async def test_work_order_keeps_its_cd_and_firmware(store: Store) -> None:
    await store.open_work_order("WO-1", 10, (CD, "1.4.2"))
    await store.open_work_order("WO-1", 10, (CD, "1.4.2"))  # the same again: fine
    await store.open_work_order("WO-1", 10)  # without a CD to compare (OPC UA, another id)
    with pytest.raises(StoreError, match=r"WO-1 was opened with CD 5e5e.* the config says a0a0"):
        await store.open_work_order("WO-1", 10, (OTHER, "1.4.2"))
    with pytest.raises(StoreError, match=r"firmware version 1\.4\.2 .* the config says 1\.5\.0"):
        await store.open_work_order("WO-1", 10, (CD, "1.5.0"))
    with pytest.raises(StoreError, match=r"CD 5e5e.* the config says none"):
        await store.open_work_order("WO-1", 10, (None, "1.4.2"))
    async with store.engine.connect() as conn:
        row = (await conn.execute(select(work_orders))).one()
    assert (row.cd_sha256, row.firmware_version) == (CD, "1.4.2")
