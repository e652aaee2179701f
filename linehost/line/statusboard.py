"""Keeps the database's jig status board current, off the hot path (`linehost status` reads it)."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any, Final

import structlog
from sqlalchemy.ext.asyncio import AsyncEngine

from linehost.errors import LinehostError
from linehost.observers import Observer
from linehost.records import JigStatus, utcnow
from linehost.store.jigboard import upsert_jig_status

FLUSH_INTERVAL: Final = 0.5  # seconds: changed jigs are written at most this often
HEARTBEAT: Final = 5.0  # seconds: every jig's row is touched this often (a dead host goes stale)

_log = structlog.get_logger("linehost.statusboard")


class StatusBoard(Observer):
    """An observer that marks jigs dirty; a task writes them in one short transaction."""

    def __init__(self, engine: AsyncEngine, *, work_order: str | None = None) -> None:
        self._engine = engine
        self._work_order = work_order
        self._jigs: dict[tuple[str, str, str], JigStatus] = {}
        self._dirty: set[tuple[str, str, str]] = set()
        self._wake = asyncio.Event()
        self._failing = False

    def jig_changed(self, status: JigStatus) -> None:
        """O(1), never touches the database."""
        key = (status.line, status.station, status.jig)
        self._jigs[key] = status
        self._dirty.add(key)
        self._wake.set()

    async def run(self) -> None:
        """Write changes until cancelled (then once more, so `stopped` is seen)."""
        loop = asyncio.get_running_loop()
        last_full = 0.0
        try:
            while True:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(HEARTBEAT):
                        await self._wake.wait()
                self._wake.clear()
                full = loop.time() - last_full >= HEARTBEAT
                await self.flush(everything=full)
                if full:
                    last_full = loop.time()
                await asyncio.sleep(FLUSH_INTERVAL)
        finally:
            with contextlib.suppress(LinehostError, TimeoutError):
                async with asyncio.timeout(2.0):
                    await self.flush(everything=True)

    async def flush(self, *, everything: bool = False) -> None:
        """Write the changed jigs (or all of them)."""
        keys = set(self._jigs) if everything else self._dirty
        self._dirty = set()
        if not keys:
            return
        now = utcnow()
        rows = [self._row(self._jigs[key], now) for key in sorted(keys)]
        try:
            await upsert_jig_status(self._engine, rows)
        except LinehostError as exc:
            self._dirty |= keys
            if not self._failing:
                _log.warning("status_board_not_written", detail=str(exc))
            self._failing = True
            return
        self._failing = False

    def _row(self, status: JigStatus, now: Any) -> dict[str, Any]:
        return {
            "line": status.line,
            "station": status.station,
            "jig": status.jig,
            "state": status.state.value,
            "uid": status.uid,
            "attempt_id": status.attempt_id,
            "since": status.since,
            "ok": status.ok,
            "failed": status.failed,
            "last_outcome": status.last_outcome.value if status.last_outcome else None,
            "last_detail": (status.last_detail or "")[:2000] or None,
            "last_uid": status.last_uid,
            "work_order": self._work_order,
            "updated_at": now,
        }
