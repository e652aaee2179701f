"""Work orders in the store: a guarded slot per assignment, on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
from sqlalchemy import text

from linehost.errors import StoreError
from linehost.line.workorder import NO_WORK_ORDER, WorkOrderGate, progress_complete
from linehost.mqtt.payloads import result_payload
from linehost.protocol.outcomes import AssignmentStatus, Outcome
from linehost.store.audit import Audit
from linehost.store.floor import summarise
from linehost.store.store import WORK_ORDER_COMPLETE, Store
from tests.store.conftest import LINE, Factory

pytestmark = pytest.mark.timeout(120)
WO = "WO-2026-0042"


@pytest.fixture
def make() -> Factory:
    return Factory()


@pytest.fixture
async def store(db_url: str) -> AsyncIterator[Store]:
    s = await Store.open(db_url, line=LINE, result_payload=result_payload)
    try:
        yield s
    finally:
        await s.close()


async def claimed(store: Store) -> int:
    async with store.engine.connect() as conn:
        value = await conn.scalar(text("SELECT claimed FROM work_orders WHERE id = :i"), {"i": WO})
    return int(value)


async def test_quantity_is_never_exceeded_and_refusals_are_recorded(
    store: Store, make: Factory
) -> None:
    await store.open_work_order(WO, 3)
    results = [await store.assign(make.request(work_order=WO)) for _ in range(5)]
    assert [r.kind for r in results] == ["issued"] * 3 + ["quota_full"] * 2
    refused = results[3]
    assert refused.outcome is Outcome.ISSUER_ERROR
    assert refused.detail.startswith(WORK_ORDER_COMPLETE)
    assert await claimed(store) == 3
    audit = store.audit()
    progress = await audit.work_order_progress(WO)
    assert progress is not None
    assert progress["assignments"] == {"issued": 3}
    assert progress["attempts"] == {"running": 3, "issuer_error": 2}
    assert progress_complete(progress)
    # the refusal is an attempt of the work order, visible to auditors
    rows = [r async for r in audit.iter_attempt_records(work_order=WO, outcome="issuer_error")]
    assert len(rows) == 2
    assert all(r["work_order"] == WO for r in rows)


async def test_a_failed_device_frees_its_slot_and_confirmed_ones_keep_theirs(
    store: Store, make: Factory
) -> None:
    await store.open_work_order(WO, 2)
    first, second = make.request(work_order=WO), make.request(work_order=WO)
    r1, r2 = await store.assign(first), await store.assign(second)
    await store.end_attempt(
        first.attempt, make.end(assignment_id=r1.assignment_id, status=AssignmentStatus.CONFIRMED)
    )
    assert (await store.assign(make.request(work_order=WO))).kind == "quota_full"
    await store.end_attempt(
        second.attempt,
        make.end(
            Outcome.DEVICE_ERROR,
            assignment_id=r2.assignment_id,
            status=AssignmentStatus.FAILED,
            device_code=3,
        ),
    )
    assert await claimed(store) == 1
    third = await store.assign(make.request(work_order=WO))
    assert third.kind == "issued"
    assert await claimed(store) == 2
    summary = summarise(await store.audit().work_order_progress(WO), WO, 2)
    assert summary["done"] == 1
    assert summary["in_flight"] == 1
    assert summary["remaining"] == 1
    assert summary["failed"] == 2  # the device error and the refusal


async def test_redelivery_needs_no_new_slot(store: Store, make: Factory) -> None:
    await store.open_work_order(WO, 1)
    req = make.request(work_order=WO)
    first = await store.assign(req)
    unknown = make.end(
        Outcome.TIMEOUT, assignment_id=first.assignment_id, status=AssignmentStatus.UNKNOWN
    )
    await store.end_attempt(req.attempt, unknown)
    again = await store.assign(make.request(req.attempt.uid, req.public_key_sha256, work_order=WO))
    assert again.kind == "redelivered"
    assert await claimed(store) == 1


async def test_open_work_order_is_idempotent_but_refuses_another_quantity(store: Store) -> None:
    await store.open_work_order(WO, 10)
    await store.open_work_order(WO, 10)
    with pytest.raises(StoreError, match="quantity 10 in the database, the config says 11"):
        await store.open_work_order(WO, 11)


async def test_attempts_without_work_order_are_not_counted(store: Store, make: Factory) -> None:
    await store.open_work_order(WO, 1)
    for _ in range(3):
        assert (await store.assign(make.request())).kind == "issued"
    assert await claimed(store) == 0


@pytest.mark.parametrize("hosts", [2, 4])
async def test_concurrent_hosts_on_one_work_order_stop_at_quantity(db_url: str, hosts: int) -> None:
    """Several stores (hosts) on one database race for the last slots: exactly `quantity`."""
    quantity, per_host = 13, 10
    stores = [
        await Store.open(db_url, line=f"line-{i}", result_payload=result_payload)
        for i in range(hosts)
    ]
    try:
        for s in stores:
            await s.open_work_order(WO, quantity)

        async def host(s: Store) -> list[Any]:
            make = Factory()
            make.line = s.line
            reqs = [make.request(work_order=WO, jig=f"j{i}") for i in range(per_host)]
            return list(await asyncio.gather(*(s.assign(r) for r in reqs)))

        results = [r for batch in await asyncio.gather(*(host(s) for s in stores)) for r in batch]
        kinds = [r.kind for r in results]
        assert kinds.count("issued") == quantity
        assert kinds.count("quota_full") == hosts * per_host - quantity
        assert await claimed(stores[0]) == quantity
        audit = Audit(stores[0].engine)
        progress = await audit.work_order_progress(WO)
        assert progress is not None
        assert progress["assignments"] == {"issued": quantity}
    finally:
        for s in stores:
            await s.close()


def test_gate_tells_jigs_once_per_change() -> None:
    gate = WorkOrderGate(WO, 5)
    calls: list[bool] = []
    gate.subscribe(lambda: calls.append(gate.complete))
    gate.set_complete(False)
    gate.set_complete(True)
    gate.set_complete(True)
    gate.set_complete(False)
    assert calls == [True, False]
    assert gate.refusal.startswith(WORK_ORDER_COMPLETE)


def test_a_line_without_work_order_is_never_complete() -> None:
    calls: list[bool] = []
    NO_WORK_ORDER.subscribe(lambda: calls.append(True))
    NO_WORK_ORDER.set_complete(True, closed=True)
    assert not NO_WORK_ORDER.complete
    assert NO_WORK_ORDER.id is None
    assert calls == []


def test_work_order_vid_pid_override_the_pki_section(tmp_path: Any) -> None:
    from linehost.config import parse_config
    from linehost.line.operations import with_work_order

    raw = {
        "line": {"name": "l"},
        "pki": {"pai_cert": "a", "pai_key": "b", "vid": "FFF1", "pid": "8000"},
        "work_order": {"id": WO, "quantity": 3, "pid": "8001"},
    }
    config = with_work_order(parse_config(raw, tmp_path / "line.toml"))
    assert (config.pki.vid, config.pki.pid) == ("FFF1", "8001")
    plain = parse_config({k: v for k, v in raw.items() if k != "work_order"}, tmp_path / "l.toml")
    assert with_work_order(plain) is plain
