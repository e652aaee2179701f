"""Integrity checks: each line's audit hash chain, and the rows against their audit trail."""

from __future__ import annotations

import json
from typing import Any, Final

from sqlalchemy import and_, func, select

from linehost.records import iso_utc
from linehost.store.chain import GENESIS_HASH, canonical_json, row_hash
from linehost.store.models import assignments, attempts, audit_log
from linehost.store.reader import Reader

MAX_PROBLEMS: Final = 50  # per kind of check; the rest is summarised


class Verification(Reader):
    """Finds edits, deletions and insertions made outside linehost."""

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
