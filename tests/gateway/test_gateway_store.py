"""The gateway database: migrations are the source of truth, the decision is a pure function,
and the token bucket keeps its rate on an injected clock."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from datetime import UTC, datetime
from typing import Any

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import select
from sqlalchemy.engine import Connection

from linehost.gateway.decision import Decision, IssuanceRecord, decide
from linehost.gateway.models import audit_log, metadata
from linehost.gateway.ratelimit import RateLimiter, TokenBucket
from linehost.gateway.store import GATEWAY_MIGRATIONS, GatewayStore
from linehost.pki.est_wire import Refusal
from linehost.records import IssuedDac
from linehost.store.audit import Audit
from linehost.store.engine import create_engine
from linehost.store.migrate import schema_is_current, upgrade_to_head


def _diffs(conn: Connection) -> list[Any]:
    ctx = MigrationContext.configure(
        conn, opts={"compare_type": True, "compare_server_default": True}
    )
    return list(compare_metadata(ctx, metadata))


async def test_models_match_migrations(db_url: str) -> None:
    engine = create_engine(db_url)
    try:
        assert not await schema_is_current(engine, directory=GATEWAY_MIGRATIONS)
        await upgrade_to_head(engine, directory=GATEWAY_MIGRATIONS)
        assert await schema_is_current(engine, directory=GATEWAY_MIGRATIONS)
        async with engine.connect() as conn:
            assert await conn.run_sync(_diffs) == []
    finally:
        await engine.dispose()


async def test_store_refuses_a_database_behind_head_when_not_migrating(db_url: str) -> None:
    import pytest

    from linehost.errors import StoreError

    with pytest.raises(StoreError, match="not at head"):
        await GatewayStore.open(db_url, name="gw", auto_migrate=False)


def _record(uid: str = "AA" * 8, key: str = "k1", client: str = "line-1") -> IssuanceRecord:
    return IssuanceRecord(
        1, client, uid, None, "issued", key, "5E", "d" * 64, "pem", datetime(2026, 1, 1, tzinfo=UTC)
    )


def test_decision_table() -> None:
    uid = "AA" * 8
    args = {"client": "line-1", "uid": uid, "public_key_sha256": "k1", "allow_reprovision": False}
    assert decide(None, None, **args).kind == "issue"  # type: ignore[arg-type]
    assert decide(_record(), None, **args).kind == "redeliver"  # type: ignore[arg-type]
    other_client = decide(_record(client="line-2"), None, **args)  # type: ignore[arg-type]
    assert (other_client.kind, other_client.refusal) == ("refuse", "uid_has_dac")
    other_key = decide(_record(key="k0"), None, **args)  # type: ignore[arg-type]
    assert (other_key.kind, other_key.refusal) == ("refuse", "uid_has_dac")
    dup = decide(None, _record(uid="BB" * 8), **args)  # type: ignore[arg-type]
    assert (dup.kind, dup.refusal) == ("refuse", "duplicate_key")
    reprov = decide(
        _record(key="k0"),
        None,
        **{**args, "allow_reprovision": True},  # type: ignore[arg-type]
    )
    assert reprov.kind == "issue"
    assert reprov.supersede == _record(key="k0")


def test_token_bucket_spends_its_burst_then_refills_at_its_rate() -> None:
    bucket = TokenBucket.full(rate=2.0, burst=3, now=100.0)
    assert [bucket.take(100.0) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert bucket.take(100.0) == 0.5
    assert bucket.take(100.25) == 0.25
    assert bucket.take(100.5) == 0.0
    assert bucket.take(200.0) == 0.0  # refilled, but never beyond the burst
    assert bucket.tokens == 2.0


def test_rate_limiter_keeps_clients_apart_and_restarts_on_a_new_rate() -> None:
    limiter = RateLimiter()
    assert limiter.take("a", 1.0, 1, 0.0) == 0.0
    assert limiter.take("a", 1.0, 1, 0.0) == 1.0
    assert limiter.take("b", 1.0, 1, 0.0) == 0.0
    assert limiter.take("a", 5.0, 1, 0.0) == 0.0  # the operator raised the rate


def _dac(n: int, key: str) -> IssuedDac:
    return IssuedDac(
        pem=f"pem {n}", der=b"", serial_hex=f"{n:X}", sha256=f"{n:064x}",
        public_key_sha256=key, pai_sha256="p" * 64, vid="FFF1", pid="8000",
    )  # fmt: skip


async def test_one_group_commit_decides_each_enrollment_on_the_ones_before_it(db_url: str) -> None:
    store = await GatewayStore.open(db_url, name="gw")
    try:

        def record(n: int, key: str, uid: str) -> Coroutine[Any, Any, Decision]:
            return store.record(
                _dac(n, key), client="line-1", uid=uid, work_order="WO-1", allow_reprovision=True
            )

        # Started together: one transaction, decided in turn (the batch's view of the database).
        results = await asyncio.gather(
            record(1, "k1", "AA" * 8),
            record(2, "k1", "BB" * 8),  # the same key for another UID
            record(3, "k3", "CC" * 8),
            record(4, "k4", "CC" * 8),  # another key for CC: supersedes 3
            record(5, "k4", "CC" * 8),  # the same key for CC again: 4 is redelivered
            record(6, "k3", "DD" * 8),  # 3 is superseded: its key is free again
        )
        assert [r.kind for r in results] == [
            "issue",
            "refuse",
            "issue",
            "issue",
            "redeliver",
            "issue",
        ]
        assert results[1].refusal == Refusal.DUPLICATE_KEY
        assert results[3].supersede is not None
        assert results[3].supersede.dac_serial == "3"
        assert results[4].existing is not None
        assert results[4].existing.dac_serial == "4"
        assert results[4].existing.id == results[3].supersede.id + 1  # ids of the database
        recorded = await store.issuances()
        ids = {r.dac_serial: r.id for r in recorded}
        assert results[3].supersede.id == ids["3"]
        async with store.engine.connect() as conn:
            stmt = select(audit_log.c.event, audit_log.c.entity_id).order_by(audit_log.c.seq)
            audit = [tuple(row) for row in (await conn.execute(stmt)).all()]
        assert audit == [  # in the order things happened, with the ids the DACs got
            ("dac_issued", str(ids["1"])),
            ("dac_issued", str(ids["3"])),
            ("dac_superseded", str(ids["3"])),
            ("dac_issued", str(ids["4"])),
            ("dac_issued", str(ids["6"])),
        ]
        assert await Audit(store.engine).verify_audit_chain(cross_check=False) == []
        records = [(r.dac_serial, r.uid, r.status) for r in recorded]
        assert records == [
            ("1", "AA" * 8, "issued"),
            ("3", "CC" * 8, "superseded"),
            ("4", "CC" * 8, "issued"),
            ("6", "DD" * 8, "issued"),
        ]
        for scope, name in (("client", "line-1"), ("work_order", "WO-1")):
            row = await store.quota(scope, name)  # type: ignore[arg-type]
            assert row is not None
            assert row.issued == 4
        assert await store.count_mismatches() == []
    finally:
        await store.close()
