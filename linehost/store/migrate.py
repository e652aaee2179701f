"""Bring a database to the newest schema with the Alembic revisions in `migrations/`."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import text
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine

from linehost.errors import LinehostError, StoreError
from linehost.store.engine import create_engine, safe_url, translate_error

# The source tree's migrations/; an installed copy (container image) names its own.
MIGRATIONS_DIR = Path(
    os.environ.get("LINEHOST_MIGRATIONS") or Path(__file__).resolve().parents[2] / "migrations"
)

# Any constant shared by every linehost host: upgrades of one database never run concurrently.
_PG_MIGRATION_LOCK = 0x6C696E65686F7374  # "linehost"


async def upgrade_to_head(engine: AsyncEngine, *, directory: Path | None = None) -> None:
    """Apply every pending revision on `engine` inside the running event loop (the line's
    revisions, or those of the migrations tree at `directory`)."""
    config = alembic_config(directory)
    try:
        async with engine.connect() as conn:
            if conn.dialect.name == "postgresql":
                await conn.execute(
                    text("SELECT pg_advisory_xact_lock(:k)"), {"k": _PG_MIGRATION_LOCK}
                )
            await conn.run_sync(_upgrade, config)
            await conn.commit()
    except LinehostError:
        raise
    except Exception as exc:
        raise translate_error(exc, engine) from exc


def upgrade_cli(url: str) -> None:
    """`linehost db upgrade`: apply every pending revision to the database at `url`."""

    async def run() -> None:
        engine = create_engine(url)
        try:
            await upgrade_to_head(engine)
        finally:
            await engine.dispose()

    asyncio.run(run())


async def schema_is_current(engine: AsyncEngine, *, directory: Path | None = None) -> bool:
    """True when the database is at the newest revision (of the tree at `directory`)."""
    config = alembic_config(directory)
    heads = set(ScriptDirectory.from_config(config).get_heads())
    try:
        async with engine.connect() as conn:
            current = await conn.run_sync(_current_heads)
    except Exception as exc:
        raise translate_error(exc, engine) from exc
    return current == heads


def alembic_config(directory: Path | None = None) -> Config:
    """An Alembic config for our revisions (or those at `directory`), without an ini file."""
    where = directory if directory is not None else MIGRATIONS_DIR
    if not (where / "env.py").is_file():
        raise StoreError(
            f"database migrations not found at {where}: run from the source tree or "
            "set LINEHOST_MIGRATIONS to the migrations folder"
        )
    config = Config()
    config.set_main_option("script_location", str(where))
    return config


def _upgrade(conn: Connection, config: Config) -> None:
    config.attributes["connection"] = conn
    command.upgrade(config, "head")


def _current_heads(conn: Connection) -> set[str]:
    return set(MigrationContext.configure(conn).get_current_heads())


async def open_current(url: str, **engine_options: Any) -> AsyncEngine:
    """An engine on the database at `url`, which must be at the current schema (StoreError
    telling to run `linehost db upgrade` otherwise)."""
    engine = create_engine(url, **engine_options)
    try:
        if not await schema_is_current(engine):
            raise StoreError(
                f"database {safe_url(engine)} is not at the current schema: "
                "run `linehost db upgrade`"
            )
    except BaseException:
        await engine.dispose()
        raise
    return engine
