"""Read-only queries for auditors: exports, histories, and checks that the records are intact."""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Any, Final

from sqlalchemy import Select, and_, func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from linehost.errors import LinehostError, StoreError
from linehost.records import assignment_record, attempt_record, iso_utc
from linehost.store.chain import GENESIS_HASH, canonical_json, row_hash
from linehost.store.engine import create_engine, safe_url, translate_error
from linehost.store.migrate import schema_is_current
from linehost.store.models import (
    assignments,
    attempts,
    audit_log,
    jig_status,
    onboarding,
    outbox,
    work_orders,
)

STREAM_CHUNK: Final = 500  # rows fetched per round trip while streaming an export
MAX_PROBLEMS: Final = 50  # per kind of check; the rest is summarised

_HEX = re.compile(r"[0-9A-Fa-f]+")


class Audit:
    """Exports, histories and integrity checks over a linehost database (never writes)."""

    def __init__(self, engine: AsyncEngine, *, owns_engine: bool = False) -> None:
        self._engine = engine
        self._owns_engine = owns_engine

    @classmethod
    async def open(cls, url: str) -> Audit:
        """Connect to the database at `url`, which must be at the current schema."""
        engine = create_engine(url)
        try:
            if not await schema_is_current(engine):
                raise StoreError(
                    f"database {safe_url(engine)} is not at the current schema: "
                    "run `linehost db upgrade`"
                )
        except BaseException:
            await engine.dispose()
            raise
        return cls(engine, owns_engine=True)

    async def close(self) -> None:
        """Release the connections (only when `open` made the engine)."""
        if self._owns_engine:
            await self._engine.dispose()

    @property
    def engine(self) -> AsyncEngine:
        """The engine, for other read-only views (the bundle pool)."""
        return self._engine

    # --- exports ---------------------------------------------------------------------------

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
        stmt = select(t).where(
            *_window(t.c.issued_at, since, until),
            *_equal({t.c.station: station, t.c.jig: jig, t.c.status: status, t.c.line: line}),
            *_equal({t.c.work_order: work_order}),
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
            select(t, *(o.c[k].label(f"ob_{k}") for k in fields))
            .select_from(t.outerjoin(o, device))
            .where(
                *_window(t.c.issued_at, since, until),
                *_equal({t.c.station: station, t.c.jig: jig, t.c.status: status, t.c.line: line}),
                *_equal({t.c.work_order: work_order}),
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
            *_window(t.c.started_at, since, until),
            *_equal({t.c.station: station, t.c.jig: jig, t.c.outcome: outcome, t.c.line: line}),
            *_equal({t.c.work_order: work_order}),
        )
        async for row in self._stream(stmt.order_by(t.c.started_at, t.c.attempt_id)):
            yield attempt_record(row)

    # --- work orders and jigs (issue 8) ------------------------------------------------------

    async def work_order_progress(self, work_order: str) -> dict[str, Any] | None:
        """Quantity, slots claimed, devices by assignment status and attempts by outcome."""
        wo = await self._all(select(work_orders).where(work_orders.c.id == work_order))
        a, t = assignments, attempts
        by_status = await self._all(
            select(a.c.status, func.count().label("n"))
            .where(a.c.work_order == work_order)
            .group_by(a.c.status)
        )
        by_outcome = await self._all(
            select(t.c.outcome, func.count().label("n"))
            .where(t.c.work_order == work_order)
            .group_by(t.c.outcome)
        )
        if not wo and not by_status and not by_outcome:
            return None
        return {
            "work_order": work_order,
            "quantity": int(wo[0]["quantity"]) if wo else None,
            "claimed": int(wo[0]["claimed"]) if wo else None,
            "assignments": {row["status"]: int(row["n"]) for row in by_status},
            "attempts": {row["outcome"] or "running": int(row["n"]) for row in by_outcome},
        }

    async def outbox_depth(self, line: str) -> int:
        """Results messages of `line` not yet accepted by the broker."""
        o = outbox
        stmt = select(func.count().label("n")).where(o.c.line == line, o.c.sent_at.is_(None))
        rows = await self._all(stmt)
        return int(rows[0]["n"]) if rows else 0

    async def jig_status_rows(self, line: str | None = None) -> list[dict[str, Any]]:
        """The jig status board (every line, or one), ordered by line, station, jig."""
        j = jig_status
        stmt = select(j).where(*_equal({j.c.line: line}))
        return await self._all(stmt.order_by(j.c.line, j.c.station, j.c.jig))

    # --- histories -------------------------------------------------------------------------

    async def uid_history(self, uid: str) -> list[dict[str, Any]]:
        """Every assignment and attempt of one device, in time order.

        Each item is an export record (`kind` = "assignment", `at` = issued_at) or an attempt
        record with its transcript (`kind` = "attempt", `at` = started_at).
        """
        uid = uid.strip().upper()
        items: list[dict[str, Any]] = []
        rows_a = await self._all(select(assignments).where(assignments.c.uid == uid))
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
        found = await self._all(select(assignments).where(where))
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

    # --- integrity -------------------------------------------------------------------------

    async def verify_audit_chain(self, *, cross_check: bool = True) -> list[str]:
        """Problems found, [] when intact: the first broken link of each line's hash chain and,
        with `cross_check`, rows of assignments / attempts that disagree with their audit trail.
        """
        problems: list[str] = []
        lines = [row["line"] for row in await self._all(select(audit_log.c.line).distinct())]
        for line in sorted(lines):
            problem = await self._verify_line(line)
            if problem is not None:
                problems.append(problem)
        if cross_check:
            problems.extend(await self._cross_check_assignments())
            problems.extend(await self._cross_check_attempts())
        return problems

    async def _verify_line(self, line: str) -> str | None:
        stmt = select(audit_log).where(audit_log.c.line == line).order_by(audit_log.c.seq)
        expected_seq, prev, prev_id = 1, GENESIS_HASH, None
        where = f"audit chain of line {line!r}"
        async for row in self._stream(stmt):
            rid, seq = row["id"], row["seq"]
            if seq != expected_seq:
                return (
                    f"{where}: row id={rid} has seq {seq}, expected {expected_seq}: "
                    "a row was deleted or inserted"
                )
            if row["prev_hash"] != prev:
                before = "the chain start" if prev_id is None else f"row id={prev_id}"
                return (
                    f"{where}: row id={rid} (seq {seq}) prev_hash does not match {before}: "
                    f"a row was deleted or inserted (or {before} edited and re-hashed)"
                )
            try:
                data = json.loads(row["data"])
            except ValueError:
                return f"{where}: row id={rid} (seq {seq}) data is not JSON: the row was edited"
            at = iso_utc(row["at"])
            digest = row_hash(
                prev,
                seq=seq,
                line=line,
                at=at or "",
                entity=row["entity"],
                entity_id=row["entity_id"],
                event=row["event"],
                data=data,
            )
            if digest != row["row_hash"] or canonical_json(data) != row["data"]:
                return f"{where}: row id={rid} (seq {seq}) hash mismatch: the row was edited"
            expected_seq, prev, prev_id = seq + 1, row["row_hash"], rid
        return None

    async def _cross_check_assignments(self) -> list[str]:
        t = assignments
        last = _last_events("assignment")
        stmt = (
            select(
                t.c.id,
                t.c.dac_serial,
                t.c.uid,
                t.c.status,
                t.c.dac_sha256,
                t.c.public_key_sha256,
                last.c.id.label("audit_id"),
                last.c.data.label("audit_data"),
            )
            .select_from(
                t.outerjoin(last, and_(last.c.entity_id == t.c.dac_serial, last.c.rn == 1))
            )
            .order_by(t.c.id)
        )
        fields = ("uid", "status", "dac_sha256", "public_key_sha256")
        problems = _Problems("assignments disagreeing with the audit log")
        async for row in self._stream(stmt):
            name = f"assignment id={row['id']} (serial {row['dac_serial']})"
            if row["audit_id"] is None:
                problems.add(f"{name} has no audit event: inserted outside linehost")
                continue
            problems.compare(name, row, _json_object(row["audit_data"]), fields, row["audit_id"])
        missing = (
            select(audit_log.c.entity_id)
            .where(
                audit_log.c.entity == "assignment",
                ~select(t.c.id).where(t.c.dac_serial == audit_log.c.entity_id).exists(),
            )
            .distinct()
            .order_by(audit_log.c.entity_id)
        )
        async for row in self._stream(missing):
            problems.add(
                f"assignment with serial {row['entity_id']} is in the audit log but not in "
                "the assignments table: deleted (or its serial edited) outside linehost"
            )
        return problems.report()

    async def _cross_check_attempts(self) -> list[str]:
        t = attempts
        last = _last_events("attempt")
        stmt = (
            select(
                t.c.attempt_id,
                t.c.uid,
                t.c.outcome,
                t.c.dac_serial,
                last.c.id.label("audit_id"),
                last.c.event.label("audit_event"),
                last.c.data.label("audit_data"),
            )
            .select_from(
                t.outerjoin(last, and_(last.c.entity_id == t.c.attempt_id, last.c.rn == 1))
            )
            .order_by(t.c.started_at, t.c.attempt_id)
        )
        problems = _Problems("attempts disagreeing with the audit log")
        async for row in self._stream(stmt):
            name = f"attempt {row['attempt_id']}"
            if row["audit_id"] is None:
                problems.add(f"{name} has no audit event: inserted outside linehost")
                continue
            data = _json_object(row["audit_data"])
            if row["audit_event"] == "attempt_started":
                data = {**data, "outcome": None}
                fields: tuple[str, ...] = ("uid", "outcome")
            else:
                fields = ("uid", "outcome", "dac_serial")
            problems.compare(name, row, data, fields, row["audit_id"])
        missing = (
            select(audit_log.c.entity_id)
            .where(
                audit_log.c.entity == "attempt",
                ~select(t.c.attempt_id).where(t.c.attempt_id == audit_log.c.entity_id).exists(),
            )
            .distinct()
            .order_by(audit_log.c.entity_id)
        )
        async for row in self._stream(missing):
            problems.add(
                f"attempt {row['entity_id']} is in the audit log but not in the attempts "
                "table: deleted outside linehost"
            )
        return problems.report()

    # --- plumbing --------------------------------------------------------------------------

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


class _Problems:
    """Collects problems of one kind, keeping the first MAX_PROBLEMS."""

    def __init__(self, what: str) -> None:
        self.what = what
        self.items: list[str] = []
        self.count = 0

    def add(self, problem: str) -> None:
        self.count += 1
        if self.count <= MAX_PROBLEMS:
            self.items.append(problem)

    def compare(
        self,
        name: str,
        row: dict[str, Any],
        data: dict[str, Any],
        fields: tuple[str, ...],
        audit_id: int,
    ) -> None:
        for f in fields:
            if row[f] != data.get(f):
                self.add(
                    f"{name}: {f} is {row[f]!r} but its last audit event (audit row "
                    f"id={audit_id}) says {data.get(f)!r}: edited outside linehost"
                )
                return

    def report(self) -> list[str]:
        if self.count > MAX_PROBLEMS:
            return [*self.items, f"... {self.count - MAX_PROBLEMS} more {self.what}"]
        return self.items


def _last_events(entity: str) -> Any:
    """Per entity id, its audit rows numbered newest first (rn = 1 is the last event)."""
    rn = func.row_number().over(partition_by=audit_log.c.entity_id, order_by=audit_log.c.id.desc())
    return (
        select(
            audit_log.c.id,
            audit_log.c.entity_id,
            audit_log.c.event,
            audit_log.c.data,
            rn.label("rn"),
        )
        .where(audit_log.c.entity == entity)
        .subquery(f"last_{entity}_events")
    )


def _json_object(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def _window(column: Any, since: datetime | None, until: datetime | None) -> list[Any]:
    clauses = []
    if since is not None:
        clauses.append(column >= since)
    if until is not None:
        clauses.append(column < until)
    return clauses


def _equal(filters: dict[Any, str | None]) -> list[Any]:
    return [column == value for column, value in filters.items() if value is not None]
