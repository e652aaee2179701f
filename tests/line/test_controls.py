"""Supervisor controls: every call is a row of the audit chain; a closed work order takes no
more devices (SQLite and PostgreSQL)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
from sqlalchemy import select

from linehost.errors import DatabaseUnavailable
from linehost.line.controls import Caller, ControlRefused, LineControls
from linehost.line.hold import JigHolds
from linehost.line.workorder import WorkOrderGate, progress_complete
from linehost.mqtt.payloads import result_payload
from linehost.protocol.outcomes import Outcome
from linehost.store.controls import ControlEvent
from linehost.store.decisions import WORK_ORDER_CLOSED
from linehost.store.models import audit_log
from linehost.store.store import Store
from tests.store.conftest import LINE, Factory

pytestmark = pytest.mark.timeout(120)
WO = "WO-CTL-1"
MES = Caller("opcua", "mes")
VIEWER = Caller("opcua", "monitor", may_control=False)


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


def controls_of(store: Store, gate: WorkOrderGate | None = None) -> LineControls:
    return LineControls(store, JigHolds(), jigs=[("st1", "j1"), ("st1", "j2")], gate=gate)


async def control_rows(store: Store) -> list[dict[str, Any]]:
    t = audit_log
    async with store.engine.connect() as conn:
        rows = await conn.execute(
            select(t.c.entity_id, t.c.event, t.c.data)
            .where(t.c.entity == "control")
            .order_by(t.c.seq)
        )
        return [{"target": r.entity_id, "event": r.event, **json.loads(r.data)} for r in rows]


async def test_hold_and_resume_are_recorded_with_the_user(store: Store) -> None:
    controls = controls_of(store)
    hold = controls.holds.of("st1", "j1")
    assert await controls.hold(MES, "st1", "j1") is True
    assert hold.held
    assert await controls.hold(MES, "st1", "j1") is False  # held already: no change, recorded
    assert await controls.resume(MES, "st1", "j1") is True
    assert not hold.held
    rows = await control_rows(store)
    assert [(r["event"], r["target"], r["result"]) for r in rows] == [
        ("jig_held", "st1/j1", "done"),
        ("jig_held", "st1/j1", "held already"),
        ("jig_resumed", "st1/j1", "done"),
    ]
    assert {r["user"] for r in rows} == {"mes"}
    assert {r["via"] for r in rows} == {"opcua"}
    assert rows[0]["operation"] == "Jig.Hold"
    assert await store.audit().verify_audit_chain() == []


async def test_refusals_are_recorded_with_the_reason_and_change_nothing(store: Store) -> None:
    controls = controls_of(store)
    with pytest.raises(ControlRefused) as denied:
        await controls.hold(VIEWER, "st1", "j1")
    assert denied.value.kind == "denied"
    assert not controls.holds.of("st1", "j1").held
    with pytest.raises(ControlRefused) as unknown:
        await controls.hold(MES, "st9", "j9")
    assert unknown.value.kind == "bad_argument"
    with pytest.raises(ControlRefused) as bad:
        await controls.open_work_order(MES, WO, 0)
    assert bad.value.kind == "bad_argument"
    with pytest.raises(ControlRefused) as missing:
        await controls.close_work_order(MES, "WO-NOWHERE")
    assert missing.value.kind == "invalid_state"
    assert "not in the database" in missing.value.reason
    rows = await control_rows(store)
    assert [r["event"] for r in rows] == ["control_refused"] * 4
    assert [r["refusal"] for r in rows] == [
        "denied",
        "bad_argument",
        "bad_argument",
        "invalid_state",
    ]
    assert rows[0]["user"] == "monitor"
    assert "may only read" in rows[0]["reason"]
    assert rows[1]["target"] == "st9/j9"
    assert rows[3]["reason"] == "work order WO-NOWHERE is not in the database"
    assert await store.audit().verify_audit_chain() == []


async def test_a_closed_work_order_takes_no_more_devices(store: Store, make: Factory) -> None:
    gate = WorkOrderGate(WO, 10)
    controls = controls_of(store, gate)
    await controls.open_work_order(MES, WO, 10)
    first = await store.assign(make.request(work_order=WO))
    assert first.kind == "issued"
    await controls.close_work_order(MES, WO)
    assert gate.complete  # the jigs know at once
    assert gate.closed
    assert gate.refusal.startswith(WORK_ORDER_CLOSED)
    refused = await store.assign(make.request(work_order=WO))
    assert refused.kind == "quota_full"
    assert refused.outcome is Outcome.ISSUER_ERROR
    assert refused.detail.startswith(WORK_ORDER_CLOSED)
    gate.set_complete(True)  # what the provisioner does on that refusal: still closed
    assert gate.refusal.startswith(WORK_ORDER_CLOSED)
    gate.set_complete(False)  # a poll that sees free slots: closed is closed
    assert gate.complete
    progress = await store.audit().work_order_progress(WO)
    assert progress is not None
    assert progress["closed_by"] == "mes"
    assert progress["closed_at"] is not None
    assert progress_complete(progress) is False  # slots are left: the closure is what counts
    with pytest.raises(ControlRefused, match="closed already"):
        await controls.close_work_order(MES, WO)
    with pytest.raises(ControlRefused, match="was closed at"):
        await controls.open_work_order(MES, WO, 10)  # a closed work order is not reopened
    with pytest.raises(ControlRefused, match="quantity 10 in the database, not 5"):
        await controls.open_work_order(MES, WO, 5)
    events = [(r["event"], r.get("refusal")) for r in await control_rows(store)]
    assert events == [
        ("work_order_opened", None),
        ("work_order_closed", None),
        ("control_refused", "invalid_state"),
        ("control_refused", "invalid_state"),
        ("control_refused", "invalid_state"),
    ]
    assert await store.audit().verify_audit_chain() == []


class _DownStore:
    async def record_control(self, event: ControlEvent) -> None:
        raise DatabaseUnavailable("database unreachable")

    async def control_work_order(
        self, event: ControlEvent, *, open_quantity: int | None = None, close_by: str = ""
    ) -> None:
        raise DatabaseUnavailable("database unreachable")


async def test_a_call_that_cannot_be_recorded_changes_nothing() -> None:
    controls = LineControls(_DownStore(), JigHolds(), jigs=[("st1", "j1")])
    with pytest.raises(ControlRefused) as exc:
        await controls.hold(MES, "st1", "j1")
    assert exc.value.kind == "unavailable"
    assert not controls.holds.of("st1", "j1").held
    with pytest.raises(ControlRefused, match="not recorded"):
        await controls.close_work_order(MES, WO)
