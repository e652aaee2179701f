"""Work orders on the line: what this host's jigs know about the quota the database keeps."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Any, Final

import structlog

from linehost.errors import LinehostError
from linehost.store.audit import Audit
from linehost.store.decisions import WORK_ORDER_CLOSED
from linehost.store.store import WORK_ORDER_COMPLETE

WATCH_INTERVAL: Final = 5.0

_log = structlog.get_logger("linehost.workorder")


class WorkOrderGate:
    """The work order every attempt of this host belongs to, and whether it is complete.

    The database decides (a guarded claim per assignment); the gate only remembers the last
    answer so that jigs show `work_order_complete` and skip issuing while nothing is left.
    """

    def __init__(self, work_order: str, quantity: int) -> None:
        self.id = work_order
        self.quantity = quantity
        self.complete = False
        self.closed = False  # a supervisor closed it: complete for good
        self._listeners: list[Callable[[], None]] = []

    def subscribe(self, listener: Callable[[], None]) -> None:
        """Call `listener` whenever `complete` changes."""
        self._listeners.append(listener)

    def set_complete(self, complete: bool, *, closed: bool = False) -> None:
        """Record what the database said; tell the jigs when it changed."""
        self.closed = self.closed or closed  # a closed work order is never opened again
        complete = complete or self.closed
        if complete is self.complete:
            return
        self.complete = complete
        event = "work_order_closed" if closed else "work_order_complete"
        _log.info(event if complete else "work_order_open", work_order=self.id)
        for listener in self._listeners:
            listener()

    @property
    def refusal(self) -> str:
        """The attempt detail for a device refused while the work order is complete."""
        if self.closed:
            return f"{WORK_ORDER_CLOSED}: {self.id} takes no more devices"
        return f"{WORK_ORDER_COMPLETE}: {self.id} has all {self.quantity} devices"


def progress_complete(progress: dict[str, Any]) -> bool:
    """No slot left: every device of the quantity has a live (issued/confirmed) DAC."""
    quantity, claimed = progress.get("quantity"), progress.get("claimed")
    return isinstance(quantity, int) and isinstance(claimed, int) and claimed >= quantity


async def watch_line(
    audit: Audit,
    *,
    line: str,
    gate: WorkOrderGate | None,
    on_progress: Callable[[dict[str, Any]], None] | None,
    on_outbox: Callable[[int], None] | None,
    interval: float = WATCH_INTERVAL,
) -> None:
    """Every `interval` s: read the work order's progress (all hosts) and the outbox depth."""
    while True:
        with contextlib.suppress(LinehostError):  # the runners report database trouble
            if gate is not None:
                progress = await audit.work_order_progress(gate.id)
                if progress is not None:
                    gate.set_complete(
                        progress_complete(progress), closed=progress.get("closed_at") is not None
                    )
                    if on_progress is not None:
                        on_progress(progress)
            if on_outbox is not None:
                on_outbox(await audit.outbox_depth(line))
        await asyncio.sleep(interval)
