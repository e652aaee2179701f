"""The revocation ledger: which DACs were taken back, when, why and by whom, and CRL numbers.

A revocation is one row in `revocations` (the database allows one per DAC, and only for a DAC in
`assignments`) and one `assignment_revoked` row in the DAC's line audit chain, written in the
same transaction. The assignment itself keeps its status: revocation is about the certificate.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

from sqlalchemy import and_, exists, func, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from linehost.errors import LinehostError, StoreError
from linehost.records import REVOCATION_REASONS, iso_utc
from linehost.store.batch import ChainHead, load_head
from linehost.store.chain import GENESIS_HASH, canonical_json, row_hash_of_json
from linehost.store.engine import WRITE_TRANSACTION, translate_error, violation_text
from linehost.store.models import (
    assignments,
    attempts,
    audit_log,
    crl_numbers,
    revocations,
)
from linehost.store.reader import Reader

#: Tries when another writer extends an audit chain or takes a CRL number between our read and
#: our insert.
RACE_TRIES: Final = 5
#: Assignments that may have left a DAC in a device that then failed (`pki revoke --candidates`).
CANDIDATE_STATUSES: Final = ("unknown", "failed")
#: The attempt outcome another line feature records when a device fails attestation.
ATTESTATION_FAILED: Final = "attestation_failed"


class RevocationError(StoreError):
    """A revocation the ledger refuses (already revoked, unknown DAC); nothing was changed."""


@dataclass(frozen=True, slots=True)
class RevocationTarget:
    """One recorded DAC that a revoke command selected."""

    dac_serial: str
    dac_sha256: str
    uid: str
    status: str
    public_key_sha256: str
    pai_sha256: str
    line: str
    work_order: str | None
    revoked_at: datetime | None
    reason: str | None

    @classmethod
    def of(cls, row: dict[str, Any]) -> RevocationTarget:
        """From an assignments row joined with its revocation (or none)."""
        return cls(
            row["dac_serial"], row["dac_sha256"], row["uid"], row["status"],
            row["public_key_sha256"], row["pai_sha256"], row["line"], row["work_order"],
            row["revoked_at"], row["reason"],
        )  # fmt: skip


@dataclass(frozen=True, slots=True)
class RevokedDac:
    """One revoked DAC as a CRL lists it."""

    dac_serial: str  # upper-case hex, no leading zeros
    revoked_at: datetime
    reason: str


@dataclass(frozen=True, slots=True)
class Candidate:
    """A delivered DAC whose device failed afterwards: the operator decides on revocation."""

    dac_serial: str
    uid: str
    status: str
    why: str
    work_order: str | None


class RevocationLedger(Reader):
    """Reads and writes of revocations and CRL numbers over one engine."""

    async def targets(
        self,
        *,
        uids: Sequence[str] = (),
        serials: Sequence[str] = (),
        sha256s: Sequence[str] = (),
        work_order: str | None = None,
    ) -> list[RevocationTarget]:
        """The recorded DACs the selectors name, oldest first (with any revocation)."""
        t = assignments
        selections: list[Any] = []
        for column, values in (
            (t.c.uid, uids),
            (t.c.dac_serial, serials),
            (t.c.dac_sha256, sha256s),
        ):
            for start in range(0, len(values), _IN_CHUNK):
                selections.append(column.in_(list(values[start : start + _IN_CHUNK])))
        if work_order is not None:
            selections.append(t.c.work_order == work_order)
        joined = t.outerjoin(revocations, revocations.c.dac_serial == t.c.dac_serial)
        found: dict[str, RevocationTarget] = {}
        for where in selections:
            stmt = (
                select(t, revocations.c.revoked_at, revocations.c.reason)
                .select_from(joined)
                .where(where)
                .order_by(t.c.id)
            )
            for row in await self._all(stmt):
                found.setdefault(row["dac_serial"], RevocationTarget.of(row))
        return list(found.values())

    async def revoke(
        self, targets: Iterable[RevocationTarget], *, reason: str, by: str, now: datetime
    ) -> int:
        """Revoke every target in one transaction with its audit rows; RevocationError when one
        is already revoked (then nothing changes). Returns how many were revoked."""
        if reason not in REVOCATION_REASONS:
            raise RevocationError(f"unknown revocation reason {reason!r}")
        chosen = list(targets)
        if not chosen:
            return 0
        for _ in range(RACE_TRIES):
            try:
                async with self._engine.connect() as conn:
                    await conn.execution_options(**{WRITE_TRANSACTION: True})
                    async with conn.begin():
                        await self._revoke_in(conn, chosen, reason, by, now)
                return len(chosen)
            except IntegrityError as exc:
                text = violation_text(exc)
                if "revocations" in text:
                    raise RevocationError(
                        "a selected DAC was revoked meanwhile; nothing was changed"
                    ) from None
                if "audit_log" not in text:
                    raise translate_error(exc, self._engine) from exc
                continue  # another host extended the chain: read its head again
            except LinehostError:
                raise
            except Exception as exc:
                raise translate_error(exc, self._engine) from exc
        raise StoreError("database kept refusing the revocation (concurrent writers?)")

    async def revoked_of(self, pai_sha256: str) -> list[RevokedDac]:
        """Every DAC revoked under the PAI with this SHA-256, in revocation order."""
        r = revocations
        stmt = (
            select(r.c.dac_serial, r.c.revoked_at, r.c.reason)
            .where(r.c.pai_sha256 == pai_sha256)
            .order_by(r.c.id)
        )
        rows = await self._all(stmt)
        return [RevokedDac(row["dac_serial"], row["revoked_at"], row["reason"]) for row in rows]

    async def revocation_mark(self) -> tuple[int, int]:
        """(count, newest id) of all revocations: changes whenever one is added."""
        rows = await self._all(select(func.count(), func.coalesce(func.max(revocations.c.id), 0)))
        values = list(rows[0].values())
        return int(values[0]), int(values[1])

    async def next_crl_number(self, pai_sha256: str, now: datetime) -> int:
        """Take the next CRL number of this PAI (1 first); never the same or a lower one."""
        c = crl_numbers
        for _ in range(RACE_TRIES):
            try:
                async with self._engine.connect() as conn:
                    await conn.execution_options(**{WRITE_TRANSACTION: True})
                    async with conn.begin():
                        current = (
                            await conn.execute(
                                select(c.c.crl_number).where(c.c.pai_sha256 == pai_sha256)
                            )
                        ).scalar()
                        if current is None:
                            await conn.execute(
                                insert(c).values(
                                    pai_sha256=pai_sha256, crl_number=1, updated_at=now
                                )
                            )
                            return 1
                        changed = await conn.execute(
                            update(c)
                            .where(c.c.pai_sha256 == pai_sha256, c.c.crl_number == current)
                            .values(crl_number=current + 1, updated_at=now)
                        )
                        if changed.rowcount == 1:
                            return int(current) + 1
            except IntegrityError:
                continue  # two hosts took the first number at once
            except Exception as exc:
                raise translate_error(exc, self._engine) from exc
        raise StoreError("database kept refusing a new CRL number (concurrent writers?)")

    async def candidates(self) -> list[Candidate]:
        """Delivered DACs whose device failed afterwards and that are not revoked yet."""
        t, a = assignments, attempts
        not_revoked = ~exists().where(revocations.c.dac_serial == t.c.dac_serial)
        delivered = exists().where(a.c.dac_serial == t.c.dac_serial)
        by_status = (
            select(t.c.dac_serial, t.c.uid, t.c.status, t.c.work_order)
            .where(t.c.status.in_(CANDIDATE_STATUSES), delivered, not_revoked)
            .order_by(t.c.id)
        )
        found: dict[str, Candidate] = {}
        for row in await self._all(by_status):
            why = f"assignment {row['status']} after delivery"
            found[row["dac_serial"]] = Candidate(
                row["dac_serial"], row["uid"], row["status"], why, row["work_order"]
            )
        by_outcome = (
            select(t.c.dac_serial, t.c.uid, t.c.status, t.c.work_order, a.c.attempt_id)
            .select_from(t.join(a, and_(a.c.dac_serial == t.c.dac_serial)))
            .where(a.c.outcome == ATTESTATION_FAILED, not_revoked)
            .order_by(t.c.id)
        )
        for row in await self._all(by_outcome):
            found.setdefault(
                row["dac_serial"],
                Candidate(
                    row["dac_serial"], row["uid"], row["status"],
                    f"attempt {row['attempt_id']} ended {ATTESTATION_FAILED}", row["work_order"],
                ),
            )  # fmt: skip
        return list(found.values())

    async def _revoke_in(
        self,
        conn: AsyncConnection,
        chosen: list[RevocationTarget],
        reason: str,
        by: str,
        now: datetime,
    ) -> None:
        serials = [target.dac_serial for target in chosen]
        done: list[str] = []
        for start in range(0, len(serials), _IN_CHUNK):
            done.extend(
                (
                    await conn.execute(
                        select(revocations.c.dac_serial).where(
                            revocations.c.dac_serial.in_(serials[start : start + _IN_CHUNK])
                        )
                    )
                ).scalars()
            )
        if done:
            raise RevocationError(
                f"DAC {done[0]} is already revoked"
                + (f" (and {len(done) - 1} more)" if len(done) > 1 else "")
                + "; nothing was changed"
            )
        await conn.execute(
            insert(revocations),
            [
                {
                    "dac_serial": target.dac_serial,
                    "pai_sha256": target.pai_sha256,
                    "reason": reason,
                    "revoked_at": now,
                    "revoked_by": by,
                }
                for target in chosen
            ],
        )
        at = iso_utc(now)
        assert at is not None
        rows: list[dict[str, Any]] = []
        by_line: dict[str, list[RevocationTarget]] = {}
        for target in chosen:
            by_line.setdefault(target.line, []).append(target)
        for line, targets in by_line.items():
            head: ChainHead | None = await load_head(conn, line)
            seq, prev = head if head is not None else (0, GENESIS_HASH)
            for target in targets:
                seq += 1
                data_json = canonical_json(
                    {
                        "uid": target.uid,
                        "status": target.status,
                        "dac_sha256": target.dac_sha256,
                        "public_key_sha256": target.public_key_sha256,
                        "reason": reason,
                        "revoked_at": at,
                        "revoked_by": by,
                    }
                )
                digest = row_hash_of_json(
                    prev, seq=seq, line=line, at=at, entity="assignment",
                    entity_id=target.dac_serial, event="assignment_revoked", data_json=data_json,
                )  # fmt: skip
                rows.append(
                    {
                        "line": line, "seq": seq, "at": now, "entity": "assignment",
                        "entity_id": target.dac_serial, "event": "assignment_revoked",
                        "data": data_json, "prev_hash": prev, "row_hash": digest,
                    }
                )  # fmt: skip
                prev = digest
        for start in range(0, len(rows), _INSERT_CHUNK):
            await conn.execute(insert(audit_log), rows[start : start + _INSERT_CHUNK])


#: Values per IN (...) list: far below SQLite's and asyncpg's bound-parameter limits.
_IN_CHUNK: Final = 900
_INSERT_CHUNK: Final = 2000
