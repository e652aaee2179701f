"""Store fixtures: an open Store per engine, and plain-data factories (no real certificates)."""

from __future__ import annotations

import secrets
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from linehost.mqtt.payloads import result_payload
from linehost.protocol.outcomes import AssignmentStatus, Outcome
from linehost.records import AssignRequest, AttemptEnd, AttemptStart, IssuedDac
from linehost.store.store import Store

LINE = "line-1"
T0 = datetime(2026, 11, 22, 5, 0, 0, 123456, tzinfo=UTC)


class Factory:
    """Random but well-formed values for the store's inputs."""

    line = LINE

    def __init__(self) -> None:
        self.clock = T0

    def tick(self, seconds: float = 1.0) -> datetime:
        self.clock += timedelta(seconds=seconds)
        return self.clock

    @staticmethod
    def key() -> str:
        return secrets.token_hex(32)

    @staticmethod
    def uid() -> str:
        return secrets.token_hex(8).upper()

    @staticmethod
    def serial() -> str:
        return (secrets.token_hex(10).upper().lstrip("0")) or "1"

    def dac(self, key: str, *, serial: str | None = None, sha256: str | None = None) -> IssuedDac:
        serial = serial or self.serial()
        return IssuedDac(
            pem=f"-----BEGIN CERTIFICATE-----\n{serial}\n-----END CERTIFICATE-----\n",
            der=bytes.fromhex(secrets.token_hex(16)),
            serial_hex=serial,
            sha256=sha256 or secrets.token_hex(32),
            public_key_sha256=key,
            pai_sha256="ab" * 32,
            vid="FFF1",
            pid="8000",
        )

    def start(
        self,
        uid: str | None = None,
        *,
        station: str = "st1",
        jig: str = "j1",
        at: datetime | None = None,
        work_order: str | None = None,
        line: str | None = None,
    ) -> AttemptStart:
        return AttemptStart(
            attempt_id=str(uuid.uuid4()),
            line=line or self.line,
            station=station,
            jig=jig,
            uid=uid if uid is not None else self.uid(),
            started_at=at or self.tick(),
            work_order=work_order,
        )

    def request(
        self,
        uid: str | None = None,
        key: str | None = None,
        *,
        allow_reprovision: bool = False,
        start: AttemptStart | None = None,
        dac: IssuedDac | None = None,
        **start_kw: Any,
    ) -> AssignRequest:
        key = key or self.key()
        start = start or self.start(uid, **start_kw)
        return AssignRequest(
            attempt=start,
            public_key_sha256=key,
            candidate=dac or self.dac(key),
            allow_reprovision=allow_reprovision,
        )

    def end(
        self,
        outcome: Outcome = Outcome.PROVISIONED,
        *,
        assignment_id: int | None = None,
        status: AssignmentStatus | None = None,
        detail: str = "",
        device_code: int | None = None,
        transcript: str = "",
    ) -> AttemptEnd:
        return AttemptEnd(
            outcome=outcome,
            detail=detail,
            ended_at=self.tick(),
            device_code=device_code,
            assignment_id=assignment_id,
            assignment_status=status,
            transcript=transcript,
        )


@pytest.fixture
def make() -> Factory:
    return Factory()


@pytest.fixture
async def store(db_url: str) -> AsyncIterator[Store]:
    s = await Store.open(db_url, line=LINE, result_payload=result_payload)
    try:
        yield s
    finally:
        await s.close()


class Raw:
    """Raw SQL on the store's database, behind the store's back (tampering, other hosts)."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine

    async def scalar(self, sql: str, **params: Any) -> Any:
        async with self.engine.connect() as conn:
            return (await conn.execute(text(sql), params)).scalar()

    async def rows(self, sql: str, **params: Any) -> list[dict[str, Any]]:
        async with self.engine.connect() as conn:
            return [dict(r) for r in (await conn.execute(text(sql), params)).mappings()]

    async def execute(self, sql: str, **params: Any) -> None:
        async with self.engine.begin() as conn:
            await conn.execute(text(sql), params)


@pytest.fixture
def raw(store: Store) -> Raw:
    return Raw(store.engine)


def record_statements(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, str]]:
    """From now on, every statement an asyncpg connection sends, as (id of the connection,
    statement) in order: BEGIN, COMMIT, ROLLBACK and the ping through the connection's own
    methods, SQLAlchemy's statements through prepared statements."""
    import asyncpg.connection
    import asyncpg.prepared_stmt

    sent: list[tuple[int, str]] = []

    def recording(cls: Any, name: str, of: Any) -> None:
        original = getattr(cls, name)

        async def record(self: Any, *args: Any, **kwargs: Any) -> Any:
            sent.append(of(self, args))
            return await original(self, *args, **kwargs)

        monkeypatch.setattr(cls, name, record)

    for name in ("execute", "fetch", "fetchrow", "fetchval"):
        recording(asyncpg.connection.Connection, name, lambda c, a: (id(c), str(a[0])))
    for name in ("fetch", "fetchrow", "fetchval", "executemany"):
        recording(
            asyncpg.prepared_stmt.PreparedStatement,
            name,
            lambda p, _a: (id(p._connection), p.get_query()),
        )
    return sent
