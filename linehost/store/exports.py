"""Exports and histories for auditors: assignment and attempt records, one device, one DAC."""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Any

from sqlalchemy import Select, and_, select

from linehost.errors import StoreError
from linehost.records import assignment_record, attempt_record, iso_utc
from linehost.store.models import assignments, attempts, audit_log, onboarding, revocations
from linehost.store.reader import Reader, equal, window

_HEX = re.compile(r"[0-9A-Fa-f]+")


class Exports(Reader):
    """Contract records streamed for export, and the history of a device or a DAC."""

    async def iter_assignment_records(
        self,
        since: datetime | None = None,
        until: datetime | None = None,
        *,
        station: str | None = None,
        jig: str | None = None,
        status: str | None = None,
        line: str | None = None,
        work_order: str | None = None,
    ) -> AsyncIterator[dict[str, Any]]:
        """Export records of assignments issued in [since, until), oldest first, streamed."""
        t = assignments
        stmt = _with_revocation(select(t)).where(
            *window(t.c.issued_at, since, until),
            *equal({t.c.station: station, t.c.jig: jig, t.c.status: status, t.c.line: line}),
            *equal({t.c.work_order: work_order}),
        )
        async for row in self._stream(stmt.order_by(t.c.issued_at, t.c.id)):
            yield assignment_record(row)

    async def iter_assignment_onboarding(
        self,
        since: datetime | None = None,
        until: datetime | None = None,
        *,
        station: str | None = None,
        jig: str | None = None,
        status: str | None = None,
        line: str | None = None,
        work_order: str | None = None,
    ) -> AsyncIterator[tuple[dict[str, Any], dict[str, Any] | None]]:
        """Like `iter_assignment_records`, each with its device's onboarding row (or None).

        The row holds the passcode only sealed: the caller decides whether to unseal it.
        """
        t, o = assignments, onboarding
        fields = [c.name for c in o.c if c.name not in ("id", "assignment_id", "created_at")]
        device = and_(o.c.uid == t.c.uid, o.c.vid == t.c.vid, o.c.pid == t.c.pid)
        stmt = (
            select(t, *_REVOCATION_COLUMNS, *(o.c[k].label(f"ob_{k}") for k in fields))
            .select_from(t.outerjoin(o, device).outerjoin(revocations, _REVOKED))
            .where(
                *window(t.c.issued_at, since, until),
                *equal({t.c.station: station, t.c.jig: jig, t.c.status: status, t.c.line: line}),
                *equal({t.c.work_order: work_order}),
            )
        )
        async for row in self._stream(stmt.order_by(t.c.issued_at, t.c.id)):
            found = row["ob_serial_num"] is not None
            yield assignment_record(row), ({k: row[f"ob_{k}"] for k in fields} if found else None)

    async def onboarding_of(self, uid: str) -> list[dict[str, Any]]:
        """The onboarding rows of one device (one per VID/PID), newest first."""
        uid = uid.strip().upper()
        stmt = select(onboarding).where(onboarding.c.uid == uid).order_by(onboarding.c.id.desc())
        return await self._all(stmt)

    async def iter_attempt_records(
        self,
        since: datetime | None = None,
        until: datetime | None = None,
        *,
        station: str | None = None,
        jig: str | None = None,
        outcome: str | None = None,
        line: str | None = None,
        work_order: str | None = None,
    ) -> AsyncIterator[dict[str, Any]]:
        """Attempt records of attempts started in [since, until), oldest first, streamed."""
        t = attempts
        stmt = select(*[c for c in t.c if c.name != "transcript"]).where(
            *window(t.c.started_at, since, until),
            *equal({t.c.station: station, t.c.jig: jig, t.c.outcome: outcome, t.c.line: line}),
            *equal({t.c.work_order: work_order}),
        )
        async for row in self._stream(stmt.order_by(t.c.started_at, t.c.attempt_id)):
            yield attempt_record(row)

    async def uid_history(self, uid: str) -> list[dict[str, Any]]:
        """Every assignment and attempt of one device, in time order.

        Each item is an export record (`kind` = "assignment", `at` = issued_at) or an attempt
        record with its transcript (`kind` = "attempt", `at` = started_at).
        """
        uid = uid.strip().upper()
        items: list[dict[str, Any]] = []
        rows_a = await self._all(
            _with_revocation(select(assignments)).where(assignments.c.uid == uid)
        )
        for row in rows_a:
            items.append({"kind": "assignment", "at": iso_utc(row["issued_at"])})
            items[-1].update(assignment_record(row))
        rows_t = await self._all(select(attempts).where(attempts.c.uid == uid))
        for row in rows_t:
            record = attempt_record(row)
            items.append({"kind": "attempt", "at": record["started_at"], **record})
            items[-1]["transcript"] = row["transcript"]
        # ISO strings of one fixed format sort like the times they spell.
        items.sort(key=lambda item: (item["at"], item["kind"] == "attempt"))
        return items

    async def dac_lookup(self, serial_or_sha256: str) -> dict[str, Any] | None:
        """One DAC by serial (hex, any case, `0x` and leading zeros allowed) or SHA-256.

        Returns None when unknown, else {"assignment": export record, "attempts": [attempt
        records that delivered it], "events": [its audit events]}.
        """
        text = serial_or_sha256.strip()
        if text[:2] in ("0x", "0X"):
            text = text[2:]
        if not text or not _HEX.fullmatch(text):
            raise StoreError(
                f"{serial_or_sha256!r} is neither a DAC serial (hex) nor a SHA-256 (64 hex digits)"
            )
        if len(text) == 64:
            where = assignments.c.dac_sha256 == text.lower()
        else:
            where = assignments.c.dac_serial == (text.upper().lstrip("0") or "0")
        found = await self._all(_with_revocation(select(assignments)).where(where))
        if not found:
            return None
        assignment = found[0]
        serial = assignment["dac_serial"]
        cols = [c for c in attempts.c if c.name != "transcript"]
        delivered = await self._all(
            select(*cols)
            .where(attempts.c.dac_serial == serial)
            .order_by(attempts.c.started_at, attempts.c.attempt_id)
        )
        events = await self._all(
            select(audit_log)
            .where(audit_log.c.entity == "assignment", audit_log.c.entity_id == serial)
            .order_by(audit_log.c.id)
        )
        return {
            "assignment": assignment_record(assignment),
            "attempts": [attempt_record(row) for row in delivered],
            "events": [
                {
                    "line": ev["line"],
                    "seq": ev["seq"],
                    "at": iso_utc(ev["at"]),
                    "event": ev["event"],
                    "data": json.loads(ev["data"]),
                }
                for ev in events
            ],
        }


_REVOKED = revocations.c.dac_serial == assignments.c.dac_serial
_REVOCATION_COLUMNS = (revocations.c.revoked_at, revocations.c.reason.label("revocation_reason"))


def _with_revocation(stmt: Select[Any]) -> Select[Any]:
    """`stmt` over assignments, with each DAC's revocation (or nulls) alongside."""
    return stmt.add_columns(*_REVOCATION_COLUMNS).select_from(
        assignments.outerjoin(revocations, _REVOKED)
    )
