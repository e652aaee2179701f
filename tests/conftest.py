"""Shared database fixtures: every store test runs on SQLite and on the real PostgreSQL.

PostgreSQL: a fresh database per test on 127.0.0.1:5432 (user postgres, trust auth; override
with LINEHOST_TEST_PG="postgresql://user@host:port"), dropped afterwards. When the server is
unreachable the postgres half is skipped with a loud reason, or fails when CI=true.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from tests.pki.softhsm import SoftHsm, make_softhsm

# pytest-xdist workers find COLUMNS=80 and LINES=24 in their environment when they import this
# file (a serial run has neither). Every subprocess would inherit them: rich then
# draws `linehost status` 80 columns wide inside a 160-column tmux pane
# (tests/line/test_status_tmux.py). A terminal's size comes from the terminal, as in a serial run.
if os.environ.get("PYTEST_XDIST_WORKER"):
    for _name in ("COLUMNS", "LINES"):
        os.environ.pop(_name, None)

PG_SERVER = os.environ.get("LINEHOST_TEST_PG", "postgresql://postgres@127.0.0.1:5432")
PG_CONNECT_TIMEOUT = 5.0


def _pg_params() -> dict[str, object]:
    parts = urlsplit(PG_SERVER)
    return {
        "host": parts.hostname or "127.0.0.1",
        "port": parts.port or 5432,
        "user": parts.username or "postgres",
        "password": parts.password,
        "database": "postgres",
        "timeout": PG_CONNECT_TIMEOUT,
    }


def _pg_unreachable(reason: str) -> None:
    message = (
        f"PostgreSQL at {PG_SERVER} is unreachable ({reason}): "
        "the PostgreSQL half of the store tests did NOT run"
    )
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(message + " (CI=true makes this an error)", pytrace=False)
    pytest.skip(message + " — start PostgreSQL or set LINEHOST_TEST_PG")


async def _postgres_database() -> AsyncIterator[str]:
    """A new, empty PostgreSQL database for one test; dropped afterwards."""
    import asyncpg

    params = _pg_params()
    try:
        admin = await asyncpg.connect(**params)
    except (OSError, TimeoutError, asyncpg.PostgresError) as exc:
        _pg_unreachable(str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
        raise AssertionError("unreachable") from exc  # pytest.skip/fail raised already
    name = f"linehost_test_{secrets.token_hex(6)}"
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    user = params["user"]
    auth = f"{user}:{params['password']}" if params["password"] else f"{user}"
    try:
        yield f"postgresql+asyncpg://{auth}@{params['host']}:{params['port']}/{name}"
    finally:
        admin = await asyncpg.connect(**params)
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()


@pytest.fixture(
    params=[
        pytest.param("sqlite", id="sqlite"),
        pytest.param("postgres", id="postgres", marks=pytest.mark.postgres),
    ]
)
async def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    """The URL of an empty database: a SQLite file, or a fresh PostgreSQL database."""
    if request.param == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path / 'linehost.db'}"
        return
    async for url in _postgres_database():
        yield url


@pytest.fixture(scope="session")
def softhsm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SoftHsm]:
    """The session's one SoftHSM2 token with the development PAI key (tests/pki/softhsm.py)."""
    yield from make_softhsm(tmp_path_factory)


@pytest.hookimpl(trylast=True)  # after pytest's own reordering by fixture scope
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """In pytest-xdist workers, the `slow` tests (end-to-end runs of 20 s to 2 min) go first.

    The scheduler hands tests out in this order: long ones started last would leave the other
    workers idle at the end. Serial runs keep the order of the files.
    """
    if os.environ.get("PYTEST_XDIST_WORKER"):
        items.sort(key=lambda item: item.get_closest_marker("slow") is None)  # stable
