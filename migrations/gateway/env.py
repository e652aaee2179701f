"""Alembic environment of the signing gateway's own database (linehost.gateway.models).

As in the line's env.py, `linehost.gateway.store.GatewayStore` hands in its connection via
`config.attributes["connection"]`; from a shell the URL comes from `LINEHOST_GATEWAY_DATABASE_URL`.
"""

from __future__ import annotations

import asyncio
import os

from alembic import context
from sqlalchemy.engine import Connection

from linehost.gateway.models import metadata
from linehost.store.engine import create_engine

config = context.config
target_metadata = metadata


def _configure(**kwargs: object) -> None:
    context.configure(
        target_metadata=target_metadata, compare_type=True, compare_server_default=True, **kwargs
    )


def do_run_migrations(connection: Connection) -> None:
    """Run the migrations on a synchronous connection (ours or the caller's)."""
    _configure(connection=connection, render_as_batch=connection.dialect.name == "sqlite")
    with context.begin_transaction():
        context.run_migrations()


async def run_async_migrations() -> None:
    """Open our own async engine for a command-line run."""
    url = os.environ.get("LINEHOST_GATEWAY_DATABASE_URL") or config.get_main_option(
        "sqlalchemy.url"
    )
    if not url:
        raise RuntimeError("set LINEHOST_GATEWAY_DATABASE_URL or sqlalchemy.url")
    engine = create_engine(url)
    try:
        async with engine.connect() as connection:
            await connection.run_sync(do_run_migrations)
            await connection.commit()
    finally:
        await engine.dispose()


connection = config.attributes.get("connection")
if connection is None:
    asyncio.run(run_async_migrations())
else:
    do_run_migrations(connection)
