"""What the host tells a plant dashboard besides jig states: work-order progress, outbox depth."""

from __future__ import annotations

from typing import Any, Protocol

from linehost.store.audit import Audit
from linehost.store.floor import summarise


class LineFacts(Protocol):
    """Figures the relay publishes retained, read from the database every few seconds."""

    async def outbox_depth(self) -> int: ...

    async def work_order(self) -> dict[str, Any] | None: ...


class HostFacts:
    """LineFacts of one line host, read through the (read-only) Audit."""

    def __init__(self, audit: Audit, line: str, work_order: tuple[str, int] | None) -> None:
        self._audit = audit
        self._line = line
        self._work_order = work_order

    async def outbox_depth(self) -> int:
        """Results of this line not yet accepted by the broker."""
        return await self._audit.outbox_depth(self._line)

    async def work_order(self) -> dict[str, Any] | None:
        """done / in flight / remaining / failed of the configured work order (all hosts)."""
        if self._work_order is None:
            return None
        wo, quantity = self._work_order
        return summarise(await self._audit.work_order_progress(wo), wo, quantity)
