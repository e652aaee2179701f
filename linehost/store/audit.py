"""The auditor's view of a linehost database: exports, integrity checks and floor reads."""

from __future__ import annotations

from linehost.store.controls import ControlReads
from linehost.store.exports import Exports
from linehost.store.floor import FloorReads
from linehost.store.migrate import open_current
from linehost.store.verification import Verification


class Audit(Exports, Verification, FloorReads, ControlReads):
    """Exports, histories, integrity checks, floor reads and supervisor calls (never writes)."""

    @classmethod
    async def open(cls, url: str) -> Audit:
        """Connect to the database at `url`, which must be at the current schema."""
        return cls(await open_current(url), owns_engine=True)
