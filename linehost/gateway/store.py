"""The gateway's database: the issuance decision and record, quota counters, client
certificates and the hash-chained audit log. The only place of the gateway with SQL.

Every write runs in one serialised transaction (SQLite BEGIN IMMEDIATE, a PostgreSQL advisory
lock), which decides again what the pre-check decided, bumps the guarded counters, records the
DAC and appends its audit events: exact under any number of requests and gateway processes.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from sqlalchemy import and_, func, insert, or_, select, text, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import RowMapping
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from linehost.errors import LinehostError, StoreError
from linehost.gateway.models import audit_log, client_certs, issuances, quotas
from linehost.pki.est_wire import Refusal
from linehost.records import IssuedDac, iso_utc, utcnow
from linehost.store.chain import GENESIS_HASH, canonical_json, row_hash_of_json
from linehost.store.engine import WRITE_TRANSACTION, create_engine, translate_error
from linehost.store.migrate import MIGRATIONS_DIR, schema_is_current, upgrade_to_head

#: Most enrollments recorded in one transaction.
MAX_BATCH = 64

#: The gateway's own Alembic tree (migrations/gateway/).
GATEWAY_MIGRATIONS = MIGRATIONS_DIR / "gateway"

# Any constant: every gateway process on one PostgreSQL database writes one at a time.
_PG_WRITE_LOCK = 0x6C68677765737421  # "lhgwest!"

Scope = Literal["client", "work_order"]


@dataclass(frozen=True, slots=True)
class IssuanceRecord:
    """One recorded DAC and whom it was issued to."""

    id: int
    client: str
    uid: str
    work_order: str | None
    status: str
    public_key_sha256: str
    dac_serial: str
    dac_sha256: str
    dac_pem: str
    issued_at: datetime


@dataclass(frozen=True, slots=True)
class QuotaRow:
    """A counter: how many DACs a client or work order had, its cap and rate limit."""

    scope: Scope
    name: str
    max_dacs: int | None
    issued: int
    rate: float | None
    burst: int | None

    def exhausted(self) -> bool:
        """True when no DAC is left under the cap."""
        return self.max_dacs is not None and self.issued >= self.max_dacs


@dataclass(frozen=True, slots=True)
class Decision:
    """What to do with one enrollment.

    kind = "issue": sign a new DAC (superseding `supersede`, when set).
    kind = "redeliver": send `existing` again (the same client asked for the same UID and key).
    kind = "refuse": send nothing; `refusal` and `detail` say why.
    """

    kind: Literal["issue", "redeliver", "refuse"]
    existing: IssuanceRecord | None = None
    supersede: IssuanceRecord | None = None
    refusal: Refusal | None = None
    detail: str = ""
    quota: str | None = None  # quota_exhausted: "client:NAME" or "work_order:NAME"


def decide(
    by_uid: IssuanceRecord | None,
    by_key: IssuanceRecord | None,
    *,
    client: str,
    uid: str,
    public_key_sha256: str,
    allow_reprovision: bool,
) -> Decision:
    """The issuance decision from the live DAC of this UID and of this key (pure)."""
    if by_uid is not None and by_uid.public_key_sha256 == public_key_sha256:
        if by_uid.client == client:
            return Decision("redeliver", existing=by_uid)
        return Decision(
            "refuse",
            refusal=Refusal.UID_HAS_DAC,
            detail=f"UID {uid} has DAC {by_uid.dac_serial} issued to another client",
        )
    if by_key is not None:
        return Decision(
            "refuse",
            refusal=Refusal.DUPLICATE_KEY,
            detail=f"this key already has DAC {by_key.dac_serial} for UID {by_key.uid}",
        )
    if by_uid is not None:
        if not allow_reprovision:
            return Decision(
                "refuse",
                refusal=Refusal.UID_HAS_DAC,
                detail=f"UID {uid} already has DAC {by_uid.dac_serial} for another key "
                "(re-provisioning is not allowed)",
            )
        return Decision("issue", supersede=by_uid)
    return Decision("issue")


@dataclass(slots=True)
class _Pending:
    dac: IssuedDac
    client: str
    uid: str
    work_order: str | None
    allow_reprovision: bool
    future: asyncio.Future[Decision] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )


@dataclass(slots=True)
class _Event:
    entity: str
    entity_id: str
    event: str
    data: Mapping[str, Any] = field(default_factory=dict)


class GatewayStore:
    """The gateway database; one per process, shared by every request."""

    def __init__(self, engine: AsyncEngine, *, name: str) -> None:
        """Use `engine` (already at the newest schema); `name` heads the audit chain."""
        self._engine = engine
        self._name = name
        # One writer at a time in this process: on SQLite a second BEGIN IMMEDIATE would sit
        # in the busy handler's sleeps; the database lock still orders other processes.
        self._write_lock = asyncio.Lock()
        self._pending: list[_Pending] = []
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
        return cls(engine, name=name)

    @property
    def engine(self) -> AsyncEngine:
        """The engine (for the audit chain verifier)."""
        return self._engine

    async def close(self) -> None:
        """Release every connection."""
        await self._engine.dispose()

    # --- issuance ------------------------------------------------------------------------

    async def precheck(
        self,
        *,
        client: str,
        uid: str,
        work_order: str | None,
        public_key_sha256: str,
        allow_reprovision: bool,
    ) -> Decision:
        """The decision as things stand, quotas included (read only: `record` decides again)."""
        async with self._read() as conn:
            by_uid, by_key = await _live(conn, uid, public_key_sha256)
            decision = decide(
                by_uid, by_key, client=client, uid=uid,
                public_key_sha256=public_key_sha256, allow_reprovision=allow_reprovision,
            )  # fmt: skip
            if decision.kind != "issue":
                return decision
            for scope, name in _scopes(client, work_order):
                row = await _quota(conn, scope, name)
                if row is not None and row.exhausted():
                    return _quota_refusal(row)
            return decision

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
        each decided in turn on what the ones before it wrote."""
        pending = _Pending(dac, client, uid, work_order, allow_reprovision)
        self._pending.append(pending)
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush(), name="gateway-group-commit")
        return await pending.future

    async def _flush(self) -> None:
        while self._pending:
            batch, self._pending = self._pending[:MAX_BATCH], self._pending[MAX_BATCH:]
            try:
                async with self._write() as (conn, events):
                    results = [await self._record_one(conn, events, item) for item in batch]
            except Exception as exc:  # the whole batch was rolled back: each caller hears why
                for item in batch:
                    if not item.future.done():
                        item.future.set_exception(exc)
                continue
            for item, result in zip(batch, results, strict=True):
                if not item.future.done():
                    item.future.set_result(result)

    async def _record_one(
        self, conn: AsyncConnection, events: list[_Event], item: _Pending
    ) -> Decision:
        dac, client, uid, work_order = item.dac, item.client, item.uid, item.work_order
        by_uid, by_key = await _live(conn, uid, dac.public_key_sha256)
        decision = decide(
            by_uid, by_key, client=client, uid=uid,
            public_key_sha256=dac.public_key_sha256, allow_reprovision=item.allow_reprovision,
        )  # fmt: skip
        if decision.kind != "issue":
            return decision
        now = utcnow()
        counted: list[tuple[Scope, str]] = []
        for scope, name in _scopes(client, work_order):
            await _ensure_quota(conn, scope, name, now)
            guarded = (
                update(quotas)
                .where(
                    quotas.c.scope == scope,
                    quotas.c.name == name,
                    or_(quotas.c.max_dacs.is_(None), quotas.c.issued < quotas.c.max_dacs),
                )
                .values(issued=quotas.c.issued + 1, updated_at=now)
            )
            if (await conn.execute(guarded)).rowcount != 1:
                for done_scope, done_name in counted:  # give back what this one took
                    await conn.execute(
                        update(quotas)
                        .where(quotas.c.scope == done_scope, quotas.c.name == done_name)
                        .values(issued=quotas.c.issued - 1)
                    )
                row = await _quota(conn, scope, name)
                assert row is not None
                return _quota_refusal(row)
            counted.append((scope, name))
        if decision.supersede is not None:
            old = decision.supersede
            await conn.execute(
                update(issuances)
                .where(issuances.c.id == old.id, issuances.c.status == "issued")
                .values(status="superseded", superseded_at=now)
            )
            events.append(
                _Event("issuance", str(old.id), "dac_superseded",
                       {"uid": uid, "dac_serial": old.dac_serial, "by_client": client})
            )  # fmt: skip
        result = await conn.execute(
            insert(issuances).values(
                client=client,
                uid=uid,
                work_order=work_order,
                status="issued",
                public_key_sha256=dac.public_key_sha256,
                dac_serial=dac.serial_hex,
                dac_sha256=dac.sha256,
                dac_pem=dac.pem,
                pai_sha256=dac.pai_sha256,
                vid=dac.vid,
                pid=dac.pid,
                issued_at=now,
            )
        )
        key = result.inserted_primary_key
        assert key is not None
        new_id = int(key[0])
        events.append(
            _Event(
                "issuance",
                str(new_id),
                "dac_issued",
                {
                    "client": client,
                    "uid": uid,
                    "work_order": work_order,
                    "dac_serial": dac.serial_hex,
                    "dac_sha256": dac.sha256,
                    "public_key_sha256": dac.public_key_sha256,
                    "pai_sha256": dac.pai_sha256,
                    "vid": dac.vid,
                    "pid": dac.pid,
                },
            )
        )
        return Decision("issue", supersede=decision.supersede)

    async def note_redelivery(self, record: IssuanceRecord, *, client: str) -> None:
        """Audit that `record`'s DAC was sent again (a retried request)."""
        async with self._write() as (_conn, events):
            events.append(
                _Event("issuance", str(record.id), "dac_redelivered",
                       {"client": client, "uid": record.uid, "dac_serial": record.dac_serial})
            )  # fmt: skip

    async def issuances(self) -> list[IssuanceRecord]:
        """Every recorded DAC, oldest first."""
        async with self._read() as conn:
            rows = (await conn.execute(select(issuances).order_by(issuances.c.id))).mappings()
            return [_issuance(row) for row in rows]

    # --- quotas ------------------------------------------------------------------------------

    async def quota(self, scope: Scope, name: str) -> QuotaRow | None:
        """The counter of `name`, or None when it never had a DAC or a setting."""
        async with self._read() as conn:
            return await _quota(conn, scope, name)

    async def quotas(self) -> list[QuotaRow]:
        """Every counter, clients first."""
        async with self._read() as conn:
            stmt = select(quotas).order_by(quotas.c.scope, quotas.c.name)
            return [_quota_row(row) for row in (await conn.execute(stmt)).mappings()]

    async def set_quota(
        self, scope: Scope, name: str, changes: Mapping[str, int | float | None]
    ) -> tuple[QuotaRow | None, QuotaRow]:
        """Change `max_dacs` / `rate` / `burst` of a counter (None clears); audited.
        Returns the row before and after."""
        allowed = {"max_dacs", "rate", "burst"}
        if not changes or set(changes) - allowed:
            raise ValueError(f"changes must be some of {sorted(allowed)}, got {sorted(changes)}")
        async with self._write() as (conn, events):
            before = await _quota(conn, scope, name)
            now = utcnow()
            await _ensure_quota(conn, scope, name, now)
            await conn.execute(
                update(quotas)
                .where(quotas.c.scope == scope, quotas.c.name == name)
                .values(**changes, updated_at=now)
            )
            after = await _quota(conn, scope, name)
            assert after is not None
            events.append(
                _Event(
                    "quota",
                    f"{scope}:{name}",
                    "quota_set",
                    {
                        "scope": scope,
                        "name": name,
                        "before": _limits(before),
                        "after": _limits(after),
                    },
                )
            )
            return before, after

    # --- client certificates -------------------------------------------------------------

    async def add_client_cert(self, client: str, cert: x509.Certificate) -> None:
        """Record a client certificate made for `client`; audited."""
        der = cert.public_bytes(serialization.Encoding.DER)
        sha = _sha256(der)
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
                _Event("client", client, "client_cert_added",
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
                    _Event("client", client, "client_cert_revoked",
                           {"client": client, "serial": row.serial, "reason": reason})
                )  # fmt: skip
            return len(found)

    async def is_revoked(self, cert_der: bytes) -> bool:
        """True when the certificate `cert_der` was revoked by `gateway client revoke`."""
        async with self._read() as conn:
            stmt = select(func.count()).where(
                client_certs.c.sha256 == _sha256(cert_der), client_certs.c.revoked_at.is_not(None)
            )
            return int((await conn.execute(stmt)).scalar_one()) > 0

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
    async def _read(self) -> AsyncIterator[AsyncConnection]:
        try:
            async with self._engine.connect() as conn:
                yield conn
        except LinehostError:
            raise
        except Exception as exc:
            raise translate_error(exc, self._engine) from exc

    @asynccontextmanager
    async def _write(self) -> AsyncIterator[tuple[AsyncConnection, list[_Event]]]:
        events: list[_Event] = []
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

    async def _append_audit(self, conn: AsyncConnection, events: list[_Event]) -> None:
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


def _scopes(client: str, work_order: str | None) -> list[tuple[Scope, str]]:
    out: list[tuple[Scope, str]] = [("client", client)]
    if work_order is not None:
        out.append(("work_order", work_order))
    return out


def _quota_refusal(row: QuotaRow) -> Decision:
    what = "client" if row.scope == "client" else "work order"
    return Decision(
        "refuse",
        refusal=Refusal.QUOTA_EXHAUSTED,
        detail=f"{what} {row.name}: quota of {row.max_dacs} DACs exhausted ({row.issued} issued)",
        quota=f"{row.scope}:{row.name}",
    )


async def _live(
    conn: AsyncConnection, uid: str, public_key_sha256: str
) -> tuple[IssuanceRecord | None, IssuanceRecord | None]:
    stmt = select(issuances).where(
        issuances.c.status == "issued",
        or_(issuances.c.uid == uid, issuances.c.public_key_sha256 == public_key_sha256),
    )
    by_uid = by_key = None
    for row in (await conn.execute(stmt)).mappings():
        record = _issuance(row)
        if record.uid == uid:
            by_uid = record
        if record.public_key_sha256 == public_key_sha256 and record.uid != uid:
            by_key = record
    return by_uid, by_key


async def _quota(conn: AsyncConnection, scope: Scope, name: str) -> QuotaRow | None:
    stmt = select(quotas).where(and_(quotas.c.scope == scope, quotas.c.name == name))
    row = (await conn.execute(stmt)).mappings().first()
    return None if row is None else _quota_row(row)


async def _ensure_quota(conn: AsyncConnection, scope: Scope, name: str, now: datetime) -> None:
    values = {"scope": scope, "name": name, "issued": 0, "updated_at": now}
    if conn.dialect.name == "postgresql":
        stmt: Any = postgresql.insert(quotas).values(values).on_conflict_do_nothing()
    else:
        stmt = sqlite.insert(quotas).values(values).on_conflict_do_nothing()
    await conn.execute(stmt)


def _issuance(row: RowMapping) -> IssuanceRecord:
    return IssuanceRecord(
        id=int(row["id"]),
        client=row["client"],
        uid=row["uid"],
        work_order=row["work_order"],
        status=row["status"],
        public_key_sha256=row["public_key_sha256"],
        dac_serial=row["dac_serial"],
        dac_sha256=row["dac_sha256"],
        dac_pem=row["dac_pem"],
        issued_at=row["issued_at"],
    )


def _quota_row(row: RowMapping) -> QuotaRow:
    return QuotaRow(
        scope=row["scope"],
        name=row["name"],
        max_dacs=row["max_dacs"],
        issued=int(row["issued"]),
        rate=row["rate"],
        burst=row["burst"],
    )


def _limits(row: QuotaRow | None) -> dict[str, Any] | None:
    if row is None:
        return None
    return {"max_dacs": row.max_dacs, "issued": row.issued, "rate": row.rate, "burst": row.burst}


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
