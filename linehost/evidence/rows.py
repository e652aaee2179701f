"""A line's audit rows as Merkle leaves, and the checkpoint table, read with SQLAlchemy Core.

The leaf of an audit row is the canonical JSON of {at, data, entity, entity_id, event, line,
seq}: exactly what the chain hashes after `prev_hash` (docs/audit.md, "The Merkle tree").
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, Final

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from linehost.errors import LinehostError
from linehost.evidence.checkpoint import Checkpoint, parse_checkpoint
from linehost.records import iso_utc
from linehost.store.chain import row_body
from linehost.store.engine import translate_error
from linehost.store.models import audit_checkpoints, audit_log

ROWS_CHUNK: Final = 2000  # audit rows per round trip


@dataclass(frozen=True, slots=True)
class AuditRow:
    """One audit row as stored."""

    id: int
    line: str
    seq: int
    at: str
    entity: str
    entity_id: str
    event: str
    data: str  # canonical JSON text, as stored
    prev_hash: str
    row_hash: str

    @classmethod
    def from_db(cls, row: Any) -> AuditRow:
        """From a row of `audit_log`."""
        return cls(
            id=int(row["id"]),
            line=row["line"],
            seq=int(row["seq"]),
            at=iso_utc(row["at"]) or "",
            entity=row["entity"],
            entity_id=row["entity_id"],
            event=row["event"],
            data=row["data"],
            prev_hash=row["prev_hash"],
            row_hash=row["row_hash"],
        )

    def leaf_text(self) -> str:
        """The leaf's canonical JSON (keys in code-point order, `data` as stored): the text the
        row's hash covers after `prev_hash`."""
        return row_body(
            seq=self.seq, line=self.line, at=self.at, entity=self.entity,
            entity_id=self.entity_id, event=self.event, data_json=self.data,
        )  # fmt: skip

    def chain_ok(self, prev_hash: str) -> bool:
        """True when this row links to `prev_hash` and its own hash recomputes."""
        if self.prev_hash != prev_hash:
            return False
        digest = hashlib.sha256((prev_hash + self.leaf_text()).encode()).hexdigest()
        return digest == self.row_hash


async def iter_rows(
    engine: AsyncEngine, line: str, after_seq: int = 0, limit: int | None = None
) -> AsyncIterator[AuditRow]:
    """The line's audit rows with seq > `after_seq`, in seq order."""
    stmt = (
        select(audit_log)
        .where(audit_log.c.line == line, audit_log.c.seq > after_seq)
        .order_by(audit_log.c.seq)
    )
    if limit is not None:
        stmt = stmt.limit(limit)
    try:
        async with engine.connect() as conn:
            result = await conn.stream(stmt.execution_options(yield_per=ROWS_CHUNK))
            async for row in result.mappings():
                yield AuditRow.from_db(row)
    except LinehostError:
        raise
    except Exception as exc:
        raise translate_error(exc, engine) from exc


async def audit_lines(engine: AsyncEngine) -> list[str]:
    """Every line with audit rows."""
    return sorted(str(r[0]) for r in await _all(engine, select(audit_log.c.line).distinct()))


async def stored_checkpoints(
    engine: AsyncEngine, line: str, *, latest: bool = False
) -> list[tuple[Checkpoint, list[str]]]:
    """The line's checkpoints in the database, oldest first (or only the newest), each with
    its frontier (hex)."""
    t = audit_checkpoints
    stmt = select(t).where(t.c.line == line)
    if latest:
        stmt = stmt.order_by(t.c.tree_size.desc()).limit(1)
    rows = await _all(engine, stmt.order_by(t.c.tree_size))
    out = []
    for row in rows:
        m = row._mapping
        value = {k: m[k] for k in ("line", "seq", "head_hash", "tree_size", "root_hash",
                                   "algorithm", "key_id", "signature")}  # fmt: skip
        value["at"] = iso_utc(m["at"])
        out.append((parse_checkpoint(value), json.loads(m["frontier"])))
    return out


async def _all(engine: AsyncEngine, stmt: Any) -> list[Any]:
    try:
        async with engine.connect() as conn:
            return list((await conn.execute(stmt)).all())
    except Exception as exc:
        raise translate_error(exc, engine) from exc
