"""Engine set-up and error mapping: durable SQLite, resilient PostgreSQL, one-line errors."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
from sqlalchemy import select, text

from linehost.errors import DatabaseUnavailable, StoreError
from linehost.mqtt.payloads import result_payload
from linehost.store.engine import create_engine, database_url
from linehost.store.models import outbox
from linehost.store.store import Store


async def test_sqlite_is_durable(tmp_path: Path) -> None:
    engine = create_engine(f"sqlite+aiosqlite:///{tmp_path / 'x.db'}")
    try:
        async with engine.connect() as conn:
            pragmas = {
                name: (await conn.exec_driver_sql(f"PRAGMA {name}")).scalar()
                for name in ("journal_mode", "synchronous", "foreign_keys", "busy_timeout")
            }
    finally:
        await engine.dispose()
    assert pragmas["journal_mode"] == "wal"
    assert pragmas["synchronous"] == 2  # FULL
    assert pragmas["foreign_keys"] == 1
    assert pragmas["busy_timeout"] >= 1000


def test_postgres_readers_ping_the_writer_does_not() -> None:
    """Readers test a pooled connection before use; the writer pays no round trip per commit
    and replaces a dead connection itself (tests/store/test_postgres_reconnect.py)."""
    engine = create_engine("postgresql+asyncpg://postgres@127.0.0.1/x")
    assert engine.pool._pre_ping  # type: ignore[attr-defined]
    writer = create_engine("postgresql+asyncpg://postgres@127.0.0.1/x", ping=False)
    assert not writer.pool._pre_ping  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("given", "driver"),
    [
        ("sqlite:///x.db", "sqlite+aiosqlite"),
        ("postgresql://u@h/db", "postgresql+asyncpg"),
        ("postgresql+asyncpg://u@h/db", "postgresql+asyncpg"),
    ],
)
def test_plain_urls_get_the_async_driver(given: str, driver: str) -> None:
    assert database_url(given).drivername == driver


@pytest.mark.parametrize("url", ["not a url", "mysql://u@h/db", "postgresql+psycopg2://u@h/d"])
def test_bad_urls_are_store_errors(url: str) -> None:
    with pytest.raises(StoreError) as info:
        create_engine(url)
    assert "\n" not in str(info.value)


async def test_unreachable_postgres_is_database_unavailable() -> None:
    with pytest.raises(DatabaseUnavailable) as info:
        await Store.open(
            "postgresql+asyncpg://postgres:secret@127.0.0.1:1/nothing",
            line="l",
            result_payload=result_payload,
        )
    message = str(info.value)
    assert "\n" not in message
    assert "unavailable" in message
    assert "secret" not in message


async def test_unopenable_sqlite_is_database_unavailable(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'missing-dir' / 'x.db'}"
    with pytest.raises(DatabaseUnavailable) as info:
        await Store.open(url, line="l", result_payload=result_payload)
    assert "\n" not in str(info.value)
    # aiosqlite stops the failed connection's thread with a future nobody awaits; let it land
    # before this test's loop closes.
    await asyncio.sleep(0.1)


async def test_datetimes_come_back_aware_utc(store: Store) -> None:
    stored = datetime(2026, 11, 22, 7, 1, 2, 123456, tzinfo=timezone(timedelta(hours=2)))
    async with store.engine.begin() as conn:
        await conn.execute(
            outbox.insert().values(
                line="x", topic="t", payload="{}", created_at=stored, sent_at=None
            )
        )
    async with store.engine.connect() as conn:
        got = (await conn.execute(select(outbox.c.created_at))).scalar_one()
        naive = (await conn.execute(text("SELECT created_at FROM outbox"))).scalar_one()
    assert got == stored
    assert got.tzinfo is not None
    assert got.utcoffset() == timedelta(0)
    assert got == datetime(2026, 11, 22, 5, 1, 2, 123456, tzinfo=UTC)
    if store.engine.dialect.name == "sqlite":  # stored as UTC text, sortable
        assert str(naive).startswith("2026-11-22 05:01:02.123456")


async def test_naive_datetimes_are_refused(store: Store) -> None:
    with pytest.raises(Exception, match="naive"):
        async with store.engine.begin() as conn:
            await conn.execute(
                outbox.insert().values(
                    line="x",
                    topic="t",
                    payload="{}",
                    created_at=datetime(2026, 1, 1),
                    sent_at=None,
                )
            )
