"""The gateway's database: the issuance decision and record, quota counters, client
certificates and the hash-chained audit log. With queries.py (the reads) and issuance.py
(recording a group commit's DACs) the only place of the gateway with SQL.

Every write runs in one serialised transaction (SQLite BEGIN IMMEDIATE, a PostgreSQL advisory
lock), which decides again what the pre-check decided, bumps the guarded counters, records the
DAC and appends its audit events: exact under any number of requests and gateway processes.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from sqlalchemy import func, insert, select, text, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from linehost.errors import LinehostError, StoreError
from linehost.gateway.decision import (
    Decision,
    IssuanceRecord,
    QuotaRow,
    Scope,
    decide,
    quota_refusal,
    scopes,
)
from linehost.gateway.issuance import Batch, Pending
from linehost.gateway.models import audit_log, client_certs, issuances, quotas
from linehost.gateway.queries import (
    AuditEvent,
    ensure_quota,
    is_revoked,
    issuance_record,
    limits,
    live,
    quota,
    quota_row,
    quotas_of,
    sha256_hex,
)
from linehost.records import IssuedDac, iso_utc, utcnow
from linehost.store.chain import GENESIS_HASH, canonical_json, row_hash_of_json
from linehost.store.engine import WRITE_TRANSACTION, create_engine, translate_error
from linehost.store.migrate import MIGRATIONS_DIR, schema_is_current, upgrade_to_head

#: Most enrollments recorded in one transaction.
MAX_BATCH = 64

#: The gateway's own Alembic tree (migrations/gateway/).
GATEWAY_MIGRATIONS = MIGRATIONS_DIR / "gateway"


@dataclass(frozen=True, slots=True)
class Admission:
    """What a request is admitted on (GatewayStore.admission)."""

    revoked: bool  # the client certificate was revoked by `gateway client revoke`
    client_quota: QuotaRow | None  # the client's counter: its rate and burst, when set
    decision: Decision | None  # None when the request carried no usable CSR


# Any constant: every gateway process on one PostgreSQL database writes one at a time.
_PG_WRITE_LOCK = 0x6C68677765737421  # "lhgwest!"


class GatewayStore:
    """The gateway database; one per process, shared by every request."""

    def __init__(
        self, engine: AsyncEngine, *, name: str, admit_engine: AsyncEngine | None = None
    ) -> None:
        """Use `engine` (already at the newest schema); `name` heads the audit chain.
        `admit_engine` (default `engine`) serves `admission`, the read every request makes."""
        self._engine = engine
        self._admit_engine = admit_engine or engine
        self._name = name
        # One writer at a time in this process: on SQLite a second BEGIN IMMEDIATE would sit
        # in the busy handler's sleeps; the database lock still orders other processes.
        self._write_lock = asyncio.Lock()
        self._pending: list[Pending] = []
        self._flusher: asyncio.Task[None] | None = None

    @classmethod
    async def open(cls, url: str, *, name: str, auto_migrate: bool = True) -> GatewayStore:
        """Connect to `url`, bringing the schema to head unless told not to; raise StoreError."""
        engine = create_engine(url)
        try:
            if auto_migrate:
                await upgrade_to_head(engine, directory=GATEWAY_MIGRATIONS)
            elif not await schema_is_current(engine, directory=GATEWAY_MIGRATIONS):
                raise StoreError(
                    "gateway database schema is not at head: run `linehost gateway db-upgrade`"
                )
        except BaseException:
            await engine.dispose()
            raise
        # PostgreSQL: admission's statements need no common snapshot (it only pre-checks;
        # the write transaction decides again), so they run in autocommit: 4 round trips a
        # request instead of 8 (a ping in a transaction, BEGIN, ROLLBACK).
        admit = create_engine(url, autocommit=True) if engine.dialect.name == "postgresql" else None
        return cls(engine, name=name, admit_engine=admit)

    @property
    def engine(self) -> AsyncEngine:
        """The engine (for the audit chain verifier)."""
        return self._engine

    async def close(self) -> None:
        """Release every connection."""
        try:
            if self._admit_engine is not self._engine:
                await self._admit_engine.dispose()
        finally:
            await self._engine.dispose()

    # --- issuance ------------------------------------------------------------------------

    async def admission(
        self,
        *,
        cert_der: bytes,
        client: str,
        uid: str,
        work_order: str | None,
        public_key_sha256: str | None,
        allow_reprovision: bool,
    ) -> Admission:
        """Everything a request is admitted on, in one read: is the client certificate revoked,
        the client's counter (its rate limit), and, when the CSR's key is known, the decision as
        things stand, quotas included (read only: `record` decides again)."""
        async with self._read(self._admit_engine) as conn:
            revoked = await is_revoked(conn, sha256_hex(cert_der))
            counted = scopes(client, work_order)
            rows = await quotas_of(conn, counted)
            if public_key_sha256 is None:
                return Admission(revoked, rows.get(("client", client)), None)
            by_uid, by_key = await live(conn, uid, public_key_sha256)
        decision = decide(
            by_uid, by_key, client=client, uid=uid,
            public_key_sha256=public_key_sha256, allow_reprovision=allow_reprovision,
        )  # fmt: skip
        if decision.kind == "issue":
            for scope in counted:
                row = rows.get(scope)
                if row is not None and row.exhausted():
                    decision = quota_refusal(row)
                    break
        return Admission(revoked, rows.get(("client", client)), decision)

    async def record(
        self,
        dac: IssuedDac,
        *,
        client: str,
        uid: str,
        work_order: str | None,
        allow_reprovision: bool,
    ) -> Decision:
        """Decide again and, for "issue", record `dac` (durable when this returns) and count it
        against the client's and the work order's quota; a "redeliver" answer means `dac` was
        not recorded and must never be sent.

        Requests waiting together are recorded in one transaction (one commit, one fsync),
        each decided in turn on what the ones before it wrote (issuance.Batch)."""
        pending = Pending(dac, client, uid, work_order, allow_reprovision)
        self._pending.append(pending)
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush(), name="gateway-group-commit")
        return await pending.future

    async def _flush(self) -> None:
        while self._pending:
            batch, self._pending = self._pending[:MAX_BATCH], self._pending[MAX_BATCH:]
            try:
                async with self._write() as (conn, events):
                    writer = await Batch.open(conn, batch, utcnow())
                    decided = [await writer.decide(item) for item in batch]
                    results = await writer.write(events, decided)
            except Exception as exc:  # the whole batch was rolled back: each caller hears why
                for item in batch:
                    if not item.future.done():
                        item.future.set_exception(exc)
                continue
            for item, result in zip(batch, results, strict=True):
                if not item.future.done():
                    item.future.set_result(result)

    async def note_redelivery(self, record: IssuanceRecord, *, client: str) -> None:
        """Audit that `record`'s DAC was sent again (a retried request)."""
        async with self._write() as (_conn, events):
            events.append(
                AuditEvent("issuance", str(record.id), "dac_redelivered",
                       {"client": client, "uid": record.uid, "dac_serial": record.dac_serial})
            )  # fmt: skip

    async def issuances(self) -> list[IssuanceRecord]:
        """Every recorded DAC, oldest first."""
        async with self._read() as conn:
            rows = (await conn.execute(select(issuances).order_by(issuances.c.id))).mappings()
            return [issuance_record(row) for row in rows]

    # --- quotas ------------------------------------------------------------------------------

    async def quota(self, scope: Scope, name: str) -> QuotaRow | None:
        """The counter of `name`, or None when it never had a DAC or a setting."""
        async with self._read() as conn:
            return await quota(conn, scope, name)

    async def quotas(self) -> list[QuotaRow]:
        """Every counter, clients first."""
        async with self._read() as conn:
            stmt = select(quotas).order_by(quotas.c.scope, quotas.c.name)
            return [quota_row(row) for row in (await conn.execute(stmt)).mappings()]

    async def set_quota(
        self, scope: Scope, name: str, changes: Mapping[str, int | float | None]
    ) -> tuple[QuotaRow | None, QuotaRow]:
        """Change `max_dacs` / `rate` / `burst` of a counter (None clears); audited.
        Returns the row before and after."""
        allowed = {"max_dacs", "rate", "burst"}
        if not changes or set(changes) - allowed:
            raise ValueError(f"changes must be some of {sorted(allowed)}, got {sorted(changes)}")
        async with self._write() as (conn, events):
            before = await quota(conn, scope, name)
            now = utcnow()
            await ensure_quota(conn, scope, name, now)
            await conn.execute(
                update(quotas)
                .where(quotas.c.scope == scope, quotas.c.name == name)
                .values(**changes, updated_at=now)
            )
            after = await quota(conn, scope, name)
            assert after is not None
            events.append(
                AuditEvent(
                    "quota",
                    f"{scope}:{name}",
                    "quota_set",
                    {
                        "scope": scope,
                        "name": name,
                        "before": limits(before),
                        "after": limits(after),
                    },
                )
            )
            return before, after

    # --- client certificates -------------------------------------------------------------

    async def add_client_cert(self, client: str, cert: x509.Certificate) -> None:
        """Record a client certificate made for `client`; audited."""
        der = cert.public_bytes(serialization.Encoding.DER)
        sha = sha256_hex(der)
        async with self._write() as (conn, events):
            now = utcnow()
            await conn.execute(
                insert(client_certs).values(
                    client=client,
                    serial=f"{cert.serial_number:X}",
                    sha256=sha,
                    not_after=cert.not_valid_after_utc,
                    added_at=now,
                )
            )
            events.append(
                AuditEvent("client", client, "client_cert_added",
                       {"client": client, "serial": f"{cert.serial_number:X}", "sha256": sha,
                        "not_after": iso_utc(cert.not_valid_after_utc)})
            )  # fmt: skip

    async def revoke_client(self, client: str, *, serial: str | None, reason: str) -> int:
        """Revoke `client`'s certificates (only `serial`'s when given); audited. Returns how
        many were revoked."""
        async with self._write() as (conn, events):
            guard = [client_certs.c.client == client, client_certs.c.revoked_at.is_(None)]
            if serial is not None:
                guard.append(client_certs.c.serial == serial.upper().lstrip("0"))
            found = (
                await conn.execute(select(client_certs.c.id, client_certs.c.serial).where(*guard))
            ).all()
            if not found:
                return 0
            await conn.execute(
                update(client_certs)
                .where(client_certs.c.id.in_([row.id for row in found]))
                .values(revoked_at=utcnow(), revocation_reason=reason)
            )
            for row in found:
                events.append(
                    AuditEvent("client", client, "client_cert_revoked",
                           {"client": client, "serial": row.serial, "reason": reason})
                )  # fmt: skip
            return len(found)

    async def client_certs(self) -> list[dict[str, Any]]:
        """Every recorded client certificate, oldest first."""
        async with self._read() as conn:
            stmt = select(client_certs).order_by(client_certs.c.id)
            return [dict(row) for row in (await conn.execute(stmt)).mappings()]

    async def count_mismatches(self) -> list[str]:
        """Counters that differ from the issuances they count ([] when all agree)."""
        problems = []
        scopes = (("client", issuances.c.client), ("work_order", issuances.c.work_order))
        async with self._read() as conn:
            for scope, column in scopes:
                stmt = select(column, func.count()).where(column.is_not(None)).group_by(column)
                counted = {str(r[0]): int(r[1]) for r in (await conn.execute(stmt)).all()}
                stmt = select(quotas.c.name, quotas.c.issued).where(quotas.c.scope == scope)
                recorded = {str(r[0]): int(r[1]) for r in (await conn.execute(stmt)).all()}
                for name in sorted(set(counted) | set(recorded)):
                    if counted.get(name, 0) != recorded.get(name, 0):
                        problems.append(
                            f"{scope} {name}: counter says {recorded.get(name, 0)} DACs, "
                            f"{counted.get(name, 0)} recorded"
                        )
        return problems

    # --- transactions --------------------------------------------------------------------

    @asynccontextmanager
    async def _read(self, engine: AsyncEngine | None = None) -> AsyncIterator[AsyncConnection]:
        engine = engine or self._engine
        try:
            async with engine.connect() as conn:
                yield conn
        except LinehostError:
            raise
        except Exception as exc:
            raise translate_error(exc, self._engine) from exc

    @asynccontextmanager
    async def _write(self) -> AsyncIterator[tuple[AsyncConnection, list[AuditEvent]]]:
        events: list[AuditEvent] = []
        try:
            async with self._write_lock, self._engine.connect() as conn:
                await conn.execution_options(**{WRITE_TRANSACTION: True})
                async with conn.begin():
                    if conn.dialect.name == "postgresql":
                        await conn.execute(
                            text("SELECT pg_advisory_xact_lock(:k)"), {"k": _PG_WRITE_LOCK}
                        )
                    yield conn, events
                    await self._append_audit(conn, events)
        except LinehostError:
            raise
        except Exception as exc:
            raise translate_error(exc, self._engine) from exc

    async def _append_audit(self, conn: AsyncConnection, events: list[AuditEvent]) -> None:
        if not events:
            return
        stmt = (
            select(audit_log.c.seq, audit_log.c.row_hash)
            .where(audit_log.c.line == self._name)
            .order_by(audit_log.c.seq.desc())
            .limit(1)
        )
        head = (await conn.execute(stmt)).first()
        seq, prev = (int(head.seq), str(head.row_hash)) if head is not None else (0, GENESIS_HASH)
        now = utcnow()
        at = iso_utc(now)
        assert at is not None
        rows = []
        for ev in events:
            seq += 1
            data_json = canonical_json(dict(ev.data))
            digest = row_hash_of_json(
                prev, seq=seq, line=self._name, at=at, entity=ev.entity,
                entity_id=ev.entity_id, event=ev.event, data_json=data_json,
            )  # fmt: skip
            rows.append(
                {"line": self._name, "seq": seq, "at": now, "entity": ev.entity,
                 "entity_id": ev.entity_id, "event": ev.event, "data": data_json,
                 "prev_hash": prev, "row_hash": digest}
            )  # fmt: skip
            prev = digest
        await conn.execute(insert(audit_log), rows)
