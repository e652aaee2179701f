"""The Sparkplug edge node's rows: bdSeq across restarts, its own cursor over the outbox."""

from __future__ import annotations

import json
from typing import Any

from linehost.protocol.outcomes import Outcome
from linehost.records import utcnow
from linehost.store.sparkplug import SparkplugStore
from linehost.store.store import Store


async def test_bd_seq_counts_on_per_edge_node_and_wraps_at_256(store: Store) -> None:
    spb = SparkplugStore(store.engine, store.line)
    assert [await spb.next_bd_seq("g", "n1", utcnow()) for _ in range(3)] == [0, 1, 2]
    assert await spb.next_bd_seq("g", "n2", utcnow()) == 0
    again = SparkplugStore(store.engine, store.line)  # a restarted host
    assert await again.next_bd_seq("g", "n1", utcnow()) == 3
    for _ in range(252):
        await again.next_bd_seq("g", "n1", utcnow())
    assert await again.next_bd_seq("g", "n1", utcnow()) == 0


async def test_sparkplug_cursor_is_independent_of_the_json_relay(store: Store, make: Any) -> None:
    spb = SparkplugStore(store.engine, store.line)
    starts = [make.start() for _ in range(3)]
    for start in starts:
        await store.end_attempt(start, make.end(Outcome.DISCONNECTED))
    json_rows = await store.pending_results(10)
    assert len(json_rows) == 3
    await store.mark_results_sent([row_id for row_id, _ in json_rows], utcnow())
    assert await store.pending_results(10) == []

    queued = await spb.pending_results(10)
    assert [q.id for q in queued] == [row_id for row_id, _ in json_rows]
    assert [json.loads(q.payload)["attempt_id"] for q in queued] == [s.attempt_id for s in starts]
    assert all(q.created_at.tzinfo is not None for q in queued)
    assert await spb.outbox_depth() == 3
    await spb.mark_results_sent([queued[0].id], utcnow())
    assert [q.id for q in await spb.pending_results(10)] == [q.id for q in queued[1:]]
    assert await spb.outbox_depth() == 2
    other_line = SparkplugStore(store.engine, "another-line")
    assert await other_line.pending_results(10) == []
