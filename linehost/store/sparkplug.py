"""The Sparkplug B edge node's state in the database: its bdSeq and its outbox cursor.

The edge node reads the same results outbox as the MQTT relay, through its own delivery column
(`sparkplug_sent_at`), so one attempt record feeds both and neither waits for the other.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Final

from sqlalchemy import func, insert, select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from linehost.store.batch import RESULTS_TOPIC
from linehost.store.engine import WRITE_TRANSACTION, translate_error
from linehost.store.models import outbox, sparkplug_nodes

BD_SEQ_MODULO: Final = 256  # Sparkplug B 3.0: bdSeq is 0..255, wrapping


@dataclass(frozen=True, slots=True)
class QueuedResult:
    """One results row the edge node has not delivered yet."""

    id: int
    payload: str  # the contract attempt record, JSON
    created_at: datetime


class SparkplugStore:
    """bdSeq persistence and the Sparkplug delivery cursor of one line's outbox."""

    def __init__(self, engine: AsyncEngine, line: str) -> None:
        self._engine = engine
        self._line = line

    async def next_bd_seq(self, group_id: str, edge_node_id: str, at: datetime) -> int:
        """Advance and return the edge node's bdSeq (0 the first time), durably."""
        t = sparkplug_nodes
        key = (t.c.group_id == group_id) & (t.c.edge_node_id == edge_node_id)
        try:
            async with self._engine.connect() as conn:
                conn = await conn.execution_options(**{WRITE_TRANSACTION: True})
                async with conn.begin():
                    row = (await conn.execute(select(t.c.bd_seq).where(key))).first()
                    if row is None:
                        value = 0
                        await conn.execute(
                            insert(t).values(
                                group_id=group_id, edge_node_id=edge_node_id, bd_seq=0,
                                updated_at=at,
                            )
                        )  # fmt: skip
                    else:
                        value = (int(row.bd_seq) + 1) % BD_SEQ_MODULO
                        await conn.execute(update(t).where(key).values(bd_seq=value, updated_at=at))
        except Exception as exc:
            raise translate_error(exc, self._engine) from exc
        return value

    async def pending_results(self, limit: int) -> list[QueuedResult]:
        """Up to `limit` results rows not yet accepted by the Sparkplug broker, oldest first."""
        o = outbox
        stmt = (
            select(o.c.id, o.c.payload, o.c.created_at)
            .where(o.c.line == self._line, o.c.topic == RESULTS_TOPIC)
            .where(o.c.sparkplug_sent_at.is_(None))
            .order_by(o.c.id)
            .limit(limit)
        )
        try:
            async with self._engine.connect() as conn:
                rows = (await conn.execute(stmt)).all()
        except Exception as exc:
            raise translate_error(exc, self._engine) from exc
        return [QueuedResult(row.id, row.payload, row.created_at) for row in rows]

    async def outbox_depth(self) -> int:
        """Results rows of this line the Sparkplug broker has not accepted yet."""
        o = outbox
        stmt = (
            select(func.count())
            .select_from(o)
            .where(o.c.line == self._line, o.c.topic == RESULTS_TOPIC)
            .where(o.c.sparkplug_sent_at.is_(None))
        )
        try:
            async with self._engine.connect() as conn:
                return int((await conn.execute(stmt)).scalar_one())
        except Exception as exc:
            raise translate_error(exc, self._engine) from exc

    async def mark_results_sent(self, ids: Sequence[int], at: datetime) -> None:
        """Record that the Sparkplug broker accepted these results rows."""
        if not ids:
            return
        o = outbox
        stmt = (
            update(o)
            .where(o.c.line == self._line, o.c.id.in_(list(ids)))
            .where(o.c.sparkplug_sent_at.is_(None))
            .values(sparkplug_sent_at=at)
        )
        try:
            async with self._engine.connect() as conn:
                conn = await conn.execution_options(**{WRITE_TRANSACTION: True})
                async with conn.begin():
                    await conn.execute(stmt)
        except Exception as exc:
            raise translate_error(exc, self._engine) from exc
