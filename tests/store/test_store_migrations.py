"""Migrations are the source of truth: they build the schema, and the models must agree."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Column, Integer, MetaData, inspect
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine

from linehost.errors import StoreError
from linehost.mqtt.payloads import result_payload
from linehost.store import migrate
from linehost.store.engine import create_engine
from linehost.store.migrate import schema_is_current, upgrade_cli, upgrade_to_head
from linehost.store.models import metadata
from linehost.store.store import Store

TABLES = {"attempts", "assignments", "audit_log", "outbox", "alembic_version"}


@pytest.fixture
async def engine(db_url: str) -> Any:
    e = create_engine(db_url)
    try:
        yield e
    finally:
        await e.dispose()


def _diffs(conn: Connection, target: MetaData) -> list[Any]:
    ctx = MigrationContext.configure(
        conn, opts={"compare_type": True, "compare_server_default": True}
    )
    return list(compare_metadata(ctx, target))


async def _run(engine: AsyncEngine, fn: Any, *args: Any) -> Any:
    async with engine.connect() as conn:
        return await conn.run_sync(fn, *args)


async def test_upgrade_builds_schema_on_empty_database(engine: AsyncEngine) -> None:
    assert not await schema_is_current(engine)
    await upgrade_to_head(engine)
    names = set(await _run(engine, lambda c: inspect(c).get_table_names()))
    assert names >= TABLES
    assert await schema_is_current(engine)
    await upgrade_to_head(engine)  # at head already: nothing to do
    assert await schema_is_current(engine)


async def test_models_match_migrations(engine: AsyncEngine) -> None:
    """Fails when a model changes without a migration (or the reverse)."""
    await upgrade_to_head(engine)
    assert await _run(engine, _diffs, metadata) == []


async def test_comparison_would_catch_drift(engine: AsyncEngine) -> None:
    """Negative control: the check above is not vacuous."""
    await upgrade_to_head(engine)
    drifted = MetaData()
    for table in metadata.tables.values():
        table.to_metadata(drifted)
    drifted.tables["attempts"].append_column(Column("extra", Integer))
    diffs = await _run(engine, _diffs, drifted)
    assert any(d[0] == "add_column" and d[3].name == "extra" for d in diffs)


def _partial_indexes_and_checks(conn: Connection) -> tuple[dict[str, str], set[str]]:
    insp = inspect(conn)
    partial: dict[str, str] = {}
    checks: set[str] = set()
    for table in ("attempts", "assignments", "audit_log", "outbox"):
        for index in insp.get_indexes(table):
            opts = index.get("dialect_options", {})
            where = opts.get("sqlite_where", opts.get("postgresql_where"))
            if where is not None:
                partial[str(index["name"])] = str(where)
        checks |= {str(c["name"]) for c in insp.get_check_constraints(table)}
    return partial, checks


async def test_partial_indexes_and_checks_match_models(engine: AsyncEngine) -> None:
    """What autogenerate does not compare: index predicates and CHECK constraints."""
    await upgrade_to_head(engine)
    partial, checks = await _run(engine, _partial_indexes_and_checks)
    expected: dict[str, str] = {}
    for table in metadata.tables.values():
        for index in table.indexes:
            where = index.dialect_options[engine.dialect.name].get("where")
            if where is not None:
                expected[str(index.name)] = str(where)
    assert set(partial) == set(expected)
    if engine.dialect.name == "sqlite":  # PostgreSQL rewrites predicates into its own form
        assert {k: " ".join(v.split()) for k, v in partial.items()} == expected
    assert checks == {"ck_attempts_outcome", "ck_assignments_status", "ck_audit_log_entity"}


async def test_upgrade_cli(db_url: str) -> None:
    await asyncio.to_thread(upgrade_cli, db_url)
    engine = create_engine(db_url)
    try:
        assert await schema_is_current(engine)
    finally:
        await engine.dispose()


async def test_open_without_auto_migrate_insists_on_current_schema(db_url: str) -> None:
    with pytest.raises(StoreError, match="linehost db upgrade"):
        await Store.open(db_url, line="line-1", auto_migrate=False, result_payload=result_payload)
    await asyncio.to_thread(upgrade_cli, db_url)
    store = await Store.open(
        db_url, line="line-1", auto_migrate=False, result_payload=result_payload
    )
    await store.close()


async def test_missing_migrations_directory_is_a_clear_error(
    engine: AsyncEngine, monkeypatch: pytest.MonkeyPatch, tmp_path: Any
) -> None:
    monkeypatch.setattr(migrate, "MIGRATIONS_DIR", tmp_path / "nowhere")
    with pytest.raises(StoreError, match="migrations not found"):
        await upgrade_to_head(engine)


def test_migrations_directory_is_found_from_the_package() -> None:
    assert (migrate.MIGRATIONS_DIR / "env.py").is_file()
    assert (migrate.MIGRATIONS_DIR / "versions").is_dir()
