"""Operational reads for the floor: work-order progress, outbox depth, the jig board."""

from __future__ import annotations

from typing import Any

from sqlalchemy import func, select

from linehost.records import iso_utc
from linehost.store.models import assignments, attempts, jig_status, outbox, work_orders
from linehost.store.reader import Reader, equal


class FloorReads(Reader):
    """How the line is doing now (`linehost status`, the work-order gate, the dashboard)."""

    async def work_order_progress(self, work_order: str) -> dict[str, Any] | None:
        """Quantity, slots claimed, devices by assignment status and attempts by outcome."""
        wo = await self._all(select(work_orders).where(work_orders.c.id == work_order))
        a, t = assignments, attempts
        by_status = await self._all(
            select(a.c.status, func.count().label("n"))
            .where(a.c.work_order == work_order)
            .group_by(a.c.status)
        )
        by_outcome = await self._all(
            select(t.c.outcome, func.count().label("n"))
            .where(t.c.work_order == work_order)
            .group_by(t.c.outcome)
        )
        if not wo and not by_status and not by_outcome:
            return None
        return {
            "work_order": work_order,
            "quantity": int(wo[0]["quantity"]) if wo else None,
            "claimed": int(wo[0]["claimed"]) if wo else None,
            "closed_at": wo[0]["closed_at"] if wo else None,
            "closed_by": wo[0]["closed_by"] if wo else None,
            "assignments": {row["status"]: int(row["n"]) for row in by_status},
            "attempts": {row["outcome"] or "running": int(row["n"]) for row in by_outcome},
        }

    async def outbox_depth(self, line: str) -> int:
        """Results messages of `line` not yet accepted by the broker."""
        o = outbox
        stmt = select(func.count().label("n")).where(o.c.line == line, o.c.sent_at.is_(None))
        rows = await self._all(stmt)
        return int(rows[0]["n"]) if rows else 0

    async def jig_status_rows(self, line: str | None = None) -> list[dict[str, Any]]:
        """The jig status board (every line, or one), ordered by line, station, jig."""
        j = jig_status
        stmt = select(j).where(*equal({j.c.line: line}))
        return await self._all(stmt.order_by(j.c.line, j.c.station, j.c.jig))


def summarise(progress: dict[str, Any] | None, work_order: str, quantity: int) -> dict[str, Any]:
    """done / failed / remaining of a work order, for `linehost workorder status`."""
    progress = progress or {"assignments": {}, "attempts": {}}
    statuses: dict[str, int] = progress.get("assignments", {})
    outcomes: dict[str, int] = progress.get("attempts", {})
    done = statuses.get("confirmed", 0)
    in_flight = statuses.get("issued", 0) + statuses.get("unknown", 0)
    failed = sum(n for outcome, n in outcomes.items() if outcome not in ("provisioned", "running"))
    return {
        "work_order": work_order,
        "quantity": progress.get("quantity") or quantity,
        "done": done,
        "in_flight": in_flight,
        "remaining": max(0, (progress.get("quantity") or quantity) - done),
        "failed": failed,
        "post_step_failed": outcomes.get("post_step_failed", 0),
        "attempts": dict(sorted(outcomes.items())),
        "devices": dict(sorted(statuses.items())),
        "closed_at": iso_utc(progress.get("closed_at")),
    }
