"""The pool of pre-issued DACs (bundles keyed by chip UID): import, guarded claim, depletion.

The claim is one guarded UPDATE (`... WHERE claimed_at IS NULL`, or the stale claim's token)
that must touch exactly one row, so two jigs or two hosts on one PostgreSQL never both win an
entry; the assignments table's UNIQUE dac_sha256 is the last line behind it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any, Final

from sqlalchemy import case, func, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from linehost.errors import StoreError
from linehost.records import BundleCount, BundleDac, ImportResult, PoolEntry, UsedBy
from linehost.store.engine import WRITE_TRANSACTION, translate_error
from linehost.store.migrate import open_current
from linehost.store.models import assignments, bundle_entries

IMPORT_CHUNK: Final = 500  # entries looked up and inserted per transaction
IMPORT_TRIES: Final = 3  # a concurrent import of the same bundle can spoil a chunk once


class BundlePool:
    """Queries over `bundle_entries`; the only place with bundle SQL."""

    def __init__(self, engine: AsyncEngine, *, owns_engine: bool = False) -> None:
        self._engine = engine
        self._owns_engine = owns_engine

    @classmethod
    async def open(cls, url: str) -> BundlePool:
        """Connect to the database at `url`, which must be at the current schema."""
        engine = await open_current(url)
        return cls(engine, owns_engine=True)

    async def close(self) -> None:
        """Release the connections (only when `open` made the engine)."""
        if self._owns_engine:
            await self._engine.dispose()

    async def add(
        self,
        bundle: str,
        dacs: Sequence[BundleDac],
        now: datetime,
        *,
        stored: Callable[[int], None] | None = None,
    ) -> ImportResult:
        """Add `dacs` to `bundle`; an entry already in the pool is left as it is (idempotent).
        `stored` hears the size of every chunk written."""
        added = unchanged = 0
        rejected: list[tuple[str, str]] = []
        for start in range(0, len(dacs), IMPORT_CHUNK):
            chunk = dacs[start : start + IMPORT_CHUNK]
            for attempt in range(IMPORT_TRIES):
                try:
                    a, u, r = await self._add_chunk(bundle, chunk, now)
                except IntegrityError:
                    if attempt == IMPORT_TRIES - 1:
                        raise StoreError(
                            "bundle import kept colliding with another import"
                        ) from None
                    continue
                except Exception as exc:
                    raise translate_error(exc, self._engine) from exc
                added, unchanged = added + a, unchanged + u
                rejected.extend(r)
                if stored is not None:
                    stored(len(chunk))
                break
        return ImportResult(added, unchanged, rejected)

    async def find(self, uid: str) -> PoolEntry | None:
        """The entry for chip `uid` (upper-case hex), claimed or not."""
        stmt = select(bundle_entries).where(bundle_entries.c.uid == uid)
        try:
            async with self._engine.connect() as conn:
                row = (await conn.execute(stmt)).first()
        except Exception as exc:
            raise translate_error(exc, self._engine) from exc
        return None if row is None else PoolEntry(**row._mapping)

    async def claim(
        self,
        entry_id: int,
        *,
        token: str,
        by: str,
        now: datetime,
        stale_token: str | None = None,
        stale_before: datetime | None = None,
    ) -> bool:
        """Claim an unclaimed entry (or take over the stale claim `stale_token` older than
        `stale_before`); True only when exactly this call's UPDATE changed the row."""
        guard = [bundle_entries.c.id == entry_id]
        if stale_token is None:
            guard.append(bundle_entries.c.claimed_at.is_(None))
        else:
            assert stale_before is not None
            guard += [
                bundle_entries.c.claim_token == stale_token,
                bundle_entries.c.claimed_at < stale_before,
            ]
        stmt = (
            update(bundle_entries)
            .where(*guard)
            .values(claimed_at=now, claim_token=token, claimed_by=by)
        )
        try:
            async with self._engine.connect() as conn:
                await conn.execution_options(**{WRITE_TRANSACTION: True})
                async with conn.begin():
                    result = await conn.execute(stmt)
                    changed = result.rowcount
                    if changed > 1:  # impossible with the id guard; never commit it
                        raise StoreError(f"bundle claim of entry {entry_id} touched {changed} rows")
        except StoreError:
            raise
        except Exception as exc:
            raise translate_error(exc, self._engine) from exc
        return changed == 1

    async def used_by(self, dac_sha256: str) -> UsedBy | None:
        """The assignment holding this DAC, if one was recorded."""
        a = assignments.c
        stmt = select(a.id, a.uid, a.status, a.public_key_sha256).where(a.dac_sha256 == dac_sha256)
        try:
            async with self._engine.connect() as conn:
                row = (await conn.execute(stmt)).first()
        except Exception as exc:
            raise translate_error(exc, self._engine) from exc
        return None if row is None else UsedBy(row.id, row.uid, row.status, row.public_key_sha256)

    async def counts(self) -> list[BundleCount]:
        """Total, claimed and remaining entries per bundle, by bundle name."""
        c = bundle_entries.c
        claimed = func.sum(case((c.claimed_at.is_not(None), 1), else_=0))
        stmt = (
            select(c.bundle, func.count().label("total"), claimed.label("claimed"))
            .group_by(c.bundle)
            .order_by(c.bundle)
        )
        try:
            async with self._engine.connect() as conn:
                rows = (await conn.execute(stmt)).all()
        except Exception as exc:
            raise translate_error(exc, self._engine) from exc
        return [
            BundleCount(
                r.bundle, int(r.total), int(r.claimed or 0), int(r.total - (r.claimed or 0))
            )
            for r in rows
        ]

    async def entries(self) -> list[PoolEntry]:
        """Every entry, by id (audit, tests)."""
        try:
            async with self._engine.connect() as conn:
                rows = (
                    await conn.execute(select(bundle_entries).order_by(bundle_entries.c.id))
                ).all()
        except Exception as exc:
            raise translate_error(exc, self._engine) from exc
        return [PoolEntry(**row._mapping) for row in rows]

    async def _add_chunk(
        self, bundle: str, chunk: Sequence[BundleDac], now: datetime
    ) -> tuple[int, int, list[tuple[str, str]]]:
        uids = {d.uid for d in chunk}
        shas = {d.dac_sha256 for d in chunk}
        async with self._engine.connect() as conn:
            await conn.execution_options(**{WRITE_TRANSACTION: True})
            async with conn.begin():
                by_uid, by_sha = await _existing(conn, uids, shas)
                rows: list[dict[str, Any]] = []
                unchanged = 0
                rejected: list[tuple[str, str]] = []
                for dac in chunk:
                    same_uid = by_uid.get(dac.uid)
                    same_dac = by_sha.get(dac.dac_sha256)
                    if same_uid is not None and same_uid[1] == dac.dac_sha256:
                        unchanged += 1
                    elif same_uid is not None:
                        rejected.append(
                            (
                                dac.source,
                                f"UID {dac.uid} already has another DAC in the pool "
                                f"(bundle {same_uid[0]}, {same_uid[2]})",
                            )
                        )
                    elif same_dac is not None:
                        rejected.append(
                            (
                                dac.source,
                                f"this DAC is already in the pool for UID {same_dac[1]} "
                                f"({same_dac[2]})",
                            )
                        )
                    else:
                        row = {
                            "bundle": bundle,
                            "uid": dac.uid,
                            "dac_serial": dac.dac_serial,
                            "dac_sha256": dac.dac_sha256,
                            "dac_pem": dac.dac_pem,
                            "public_key_sha256": dac.public_key_sha256,
                            "pai_sha256": dac.pai_sha256,
                            "vid": dac.vid,
                            "pid": dac.pid,
                            "source": dac.source,
                            "imported_at": now,
                            "claimed_at": None,
                            "claim_token": None,
                            "claimed_by": None,
                        }
                        rows.append(row)
                        by_uid[dac.uid] = (bundle, dac.dac_sha256, dac.source)
                        by_sha[dac.dac_sha256] = (bundle, dac.uid, dac.source)
                if rows:
                    await conn.execute(insert(bundle_entries), rows)
        return len(rows), unchanged, rejected


async def _existing(
    conn: AsyncConnection, uids: set[str], shas: set[str]
) -> tuple[dict[str, tuple[str, str, str]], dict[str, tuple[str, str, str]]]:
    """Pool entries sharing a UID or a DAC: uid -> (bundle, sha, source), sha -> (bundle, uid,
    source)."""
    c = bundle_entries.c
    stmt = select(c.bundle, c.uid, c.dac_sha256, c.source).where(
        c.uid.in_(uids) | c.dac_sha256.in_(shas)
    )
    by_uid: dict[str, tuple[str, str, str]] = {}
    by_sha: dict[str, tuple[str, str, str]] = {}
    for row in (await conn.execute(stmt)).all():
        by_uid[row.uid] = (row.bundle, row.dac_sha256, row.source)
        by_sha[row.dac_sha256] = (row.bundle, row.uid, row.source)
    return by_uid, by_sha
