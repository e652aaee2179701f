"""The plumbing every read-only view shares: an engine, streamed and whole-result SELECTs."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import datetime
from typing import Any, Final

from sqlalchemy import Select
from sqlalchemy.ext.asyncio import AsyncEngine

from linehost.errors import LinehostError
from linehost.store.engine import translate_error

STREAM_CHUNK: Final = 500  # rows fetched per round trip while streaming an export


class Reader:
    """Read-only queries over one engine (never writes)."""

    def __init__(self, engine: AsyncEngine, *, owns_engine: bool = False) -> None:
        """Read over `engine`; `owns_engine`: `close` disposes of it."""
        self._engine = engine
        self._owns_engine = owns_engine

    async def close(self) -> None:
        """Release the connections (only when this reader owns the engine)."""
        if self._owns_engine:
            await self._engine.dispose()

    @property
    def engine(self) -> AsyncEngine:
        """The engine, for other read-only views (the bundle pool)."""
        return self._engine

    async def _stream(self, stmt: Select[Any]) -> AsyncIterator[dict[str, Any]]:
        try:
            async with self._engine.connect() as conn:
                result = await conn.stream(stmt.execution_options(yield_per=STREAM_CHUNK))
                async for row in result.mappings():
                    yield dict(row)
        except LinehostError:
            raise
        except Exception as exc:
            raise translate_error(exc, self._engine) from exc

    async def _all(self, stmt: Select[Any]) -> list[dict[str, Any]]:
        try:
            async with self._engine.connect() as conn:
                return [dict(row) for row in (await conn.execute(stmt)).mappings()]
        except Exception as exc:
            raise translate_error(exc, self._engine) from exc


def window(column: Any, since: datetime | None, until: datetime | None) -> list[Any]:
    """`since <= column < until`, each bound only when given."""
    clauses = []
    if since is not None:
        clauses.append(column >= since)
    if until is not None:
        clauses.append(column < until)
    return clauses


def equal(filters: dict[Any, str | None]) -> list[Any]:
    """`column == value` for each filter that has a value."""
    return [column == value for column, value in filters.items() if value is not None]
