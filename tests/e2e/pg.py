"""A fresh PostgreSQL database for one end-to-end test, and what tests do to it from outside."""

from __future__ import annotations

import asyncio
import secrets
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any
from urllib.parse import urlsplit

from tests.conftest import _pg_params, _pg_unreachable


@contextmanager
def postgres_database() -> Iterator[str]:
    """The URL of a new, empty database; dropped (connections and all) afterwards.

    Skips (or fails when CI=true) like the store tests when the server is unreachable.
    """
    import asyncpg

    name = f"linehost_test_{secrets.token_hex(6)}"
    try:
        asyncio.run(_sql(f'CREATE DATABASE "{name}"'))
    except (OSError, TimeoutError, asyncpg.PostgresError) as exc:
        _pg_unreachable(str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
        raise
    params = _pg_params()
    user = f"{params['user']}:{params['password']}" if params["password"] else params["user"]
    try:
        yield f"postgresql+asyncpg://{user}@{params['host']}:{params['port']}/{name}"
    finally:
        asyncio.run(_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


def database_name(url: str) -> str:
    return urlsplit(url).path.lstrip("/")


async def _sql(sql: str, *args: Any, database: str = "postgres") -> list[Any]:
    import asyncpg

    conn = await asyncpg.connect(**{**_pg_params(), "database": database})
    try:
        return list(await conn.fetch(sql, *args))
    finally:
        await conn.close()


def query(url: str, sql: str, *args: Any) -> list[dict[str, Any]]:
    """Rows of `sql` run on the test database (as the server's admin user)."""
    return [dict(r) for r in asyncio.run(_sql(sql, *args, database=database_name(url)))]


def terminate_backends(url: str) -> int:
    """pg_terminate_backend on every connection to this test database, and only to it."""
    rows = asyncio.run(
        _sql(
            "SELECT count(pg_terminate_backend(pid)) AS n FROM pg_stat_activity "
            "WHERE datname = $1 AND pid <> pg_backend_pid()",
            database_name(url),
        )
    )
    return int(rows[0]["n"])


def allow_connections(url: str, allowed: bool) -> None:
    """Let clients connect to the test database, or refuse them all (superusers too)."""
    value = "true" if allowed else "false"
    asyncio.run(_sql(f'ALTER DATABASE "{database_name(url)}" ALLOW_CONNECTIONS {value}'))


class BackendKiller(threading.Thread):
    """Terminates the test database's connections every `interval` s for `seconds` s; with
    `refuse`, new connections are refused meanwhile too: a full outage of that one database
    (what a server restart looks like to a client, without disturbing other databases)."""

    def __init__(
        self, url: str, seconds: float, interval: float = 0.1, *, refuse: bool = False
    ) -> None:
        super().__init__(name="backend-killer", daemon=True)
        self.url = url
        self.seconds = seconds
        self.interval = interval
        self.refuse = refuse
        self.killed = 0
        self.rounds = 0

    def run(self) -> None:
        stop = threading.Event()
        timer = threading.Timer(self.seconds, stop.set)
        timer.start()
        try:
            if self.refuse:
                allow_connections(self.url, False)
            while not stop.is_set():
                self.killed += terminate_backends(self.url)
                self.rounds += 1
                stop.wait(self.interval)
        finally:
            timer.cancel()
            if self.refuse:
                allow_connections(self.url, True)
