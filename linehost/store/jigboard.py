"""The jig status board: one row per jig, upserted by its host (`linehost status` reads it)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncEngine

from linehost.store.engine import WRITE_TRANSACTION, translate_error
from linehost.store.models import jig_status

_KEY = ("line", "station", "jig")


async def upsert_jig_status(engine: AsyncEngine, rows: Sequence[dict[str, Any]]) -> None:
    """Insert or replace these jigs' rows in one short transaction."""
    if not rows:
        return
    dialect = postgresql if engine.dialect.name == "postgresql" else sqlite
    stmt = dialect.insert(jig_status)
    stmt = stmt.on_conflict_do_update(
        index_elements=list(_KEY),
        set_={c.name: stmt.excluded[c.name] for c in jig_status.c if c.name not in _KEY},
    )
    try:
        async with engine.connect() as conn:
            await conn.execution_options(**{WRITE_TRANSACTION: True})
            async with conn.begin():
                await conn.execute(stmt, list(rows))
    except Exception as exc:
        raise translate_error(exc, engine) from exc
