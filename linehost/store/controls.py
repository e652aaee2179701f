"""Supervisor controls in the store: each call is one row of the `control` entity in the line's
audit chain; opening or closing a work order is written in the same transaction as its row."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final, Literal

from sqlalchemy import select

from linehost.errors import StoreError
from linehost.records import iso_utc
from linehost.store.batch import Batch, Wants
from linehost.store.models import audit_log
from linehost.store.operations import Op
from linehost.store.reader import Reader, equal, window

#: The audit-log entity of supervisor control calls (entity_id: the jig or work order).
CONTROL_ENTITY: Final = "control"
ENTITY_ID_LEN: Final = 64


class WorkOrderRefused(StoreError):
    """The work order cannot be opened or closed as asked (unknown, closed, other quantity)."""


@dataclass(frozen=True, slots=True)
class ControlEvent:
    """One supervisor call as the audit chain keeps it: `event` on `target` with `data`."""

    event: str  # jig_held, jig_resumed, work_order_opened, work_order_closed, control_refused
    target: str  # "station/jig" or a work order id
    data: dict[str, Any]


class ControlOp(Op[None]):
    """Append one control event to the line's audit chain."""

    def __init__(self, event: ControlEvent) -> None:
        super().__init__()
        self.event = event

    def want(self, wants: Wants) -> None:
        pass

    def apply(self, batch: Batch) -> None:
        _audit(batch, self.event)

    def result(self) -> None:
        return None


class WorkOrderOp(Op[None]):
    """Open or close a work order together with its control event; WorkOrderRefused when the
    database disagrees (nothing written then)."""

    def __init__(
        self,
        action: Literal["open", "close"],
        work_order: str,
        event: ControlEvent,
        *,
        quantity: int = 0,
        by: str = "",
    ) -> None:
        super().__init__()
        self.action = action
        self.work_order = work_order
        self.event = event
        self.quantity = quantity
        self.by = by

    def want(self, wants: Wants) -> None:
        wants.work_orders.add(self.work_order)

    def apply(self, batch: Batch) -> None:
        wo = self.work_order
        known = batch.work_orders.get(wo)
        closed = batch.closed_work_orders.get(wo)
        if self.action == "open":
            if known is not None and known[0] != self.quantity:
                raise WorkOrderRefused(
                    f"work order {wo} has quantity {known[0]} in the database, not {self.quantity}"
                )
            if closed is not None:
                raise WorkOrderRefused(f"work order {wo} was closed at {closed:%Y-%m-%d %H:%M}Z")
            if known is None:
                batch.open_work_order(wo, self.quantity)
        else:
            if known is None:
                raise WorkOrderRefused(f"work order {wo} is not in the database")
            if closed is not None:
                raise WorkOrderRefused(f"work order {wo} is closed already")
            batch.close_work_order(wo, self.by)
        _audit(batch, self.event)

    def result(self) -> None:
        return None


def _audit(batch: Batch, event: ControlEvent) -> None:
    batch.audit(CONTROL_ENTITY, event.target[:ENTITY_ID_LEN], event.event, event.data)


#: The fields of a control record (`linehost audit controls`).
CONTROL_FIELDS: Final = [
    "seq", "line", "at", "event", "target", "via", "user", "operation", "arguments", "result",
    "refusal", "reason",
]  # fmt: skip


class ControlReads(Reader):
    """The supervisor calls in the audit chain, for auditors."""

    async def iter_control_records(
        self,
        since: datetime | None = None,
        until: datetime | None = None,
        *,
        line: str | None = None,
        user: str | None = None,
    ) -> AsyncIterator[dict[str, Any]]:
        """Control records of calls made in [since, until), oldest first, streamed."""
        t = audit_log
        stmt = select(t.c.line, t.c.seq, t.c.at, t.c.event, t.c.entity_id, t.c.data).where(
            t.c.entity == CONTROL_ENTITY, *window(t.c.at, since, until), *equal({t.c.line: line})
        )
        async for row in self._stream(stmt.order_by(t.c.at, t.c.line, t.c.seq)):
            data = json.loads(row["data"])
            if user is not None and data.get("user") != user:
                continue
            yield {
                "seq": row["seq"],
                "line": row["line"],
                "at": iso_utc(row["at"]),
                "event": row["event"],
                "target": row["entity_id"],
                **{k: data.get(k) for k in CONTROL_FIELDS[5:]},
            }
