"""Connection loss on the real PostgreSQL: the store runs the batch again on a new connection,
a commit cut short is reported as DatabaseUnavailable, and a retry of the same attempt neither
loses nor doubles it."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar
from urllib.parse import urlsplit

import pytest

from linehost.errors import DatabaseUnavailable
from linehost.mqtt.payloads import result_payload
from linehost.protocol.outcomes import AssignmentStatus, Outcome
from linehost.store.engine import is_unavailable, translate_error
from linehost.store.store import Store
from tests.conftest import _pg_params, _postgres_database
from tests.store.conftest import LINE, Factory

pytestmark = [pytest.mark.postgres, pytest.mark.timeout(120)]

T = TypeVar("T")


def asyncpg_error(name: str, message: str) -> Exception:
    """An asyncpg server error as asyncpg raises it (SQLAlchemy does not wrap connect errors)."""
    import asyncpg

    error: Exception = getattr(asyncpg.exceptions, name)(message)
    return error


@pytest.fixture
async def pg_url() -> AsyncIterator[str]:
    async for url in _postgres_database():
        yield url


async def terminate_backends(url: str) -> int:
    """pg_terminate_backend on every connection to this test database (ours only)."""
    import asyncpg

    admin = await asyncpg.connect(**_pg_params())
    try:
        killed = await admin.fetchval(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE datname = $1 AND pid <> pg_backend_pid()",
            urlsplit(url).path.lstrip("/"),
        )
    finally:
        await admin.close()
    return int(killed)


async def patiently(call: Callable[[], Awaitable[T]], waits: list[int]) -> T:
    """What a jig does: retry while the database is unavailable."""
    while True:
        try:
            return await call()
        except DatabaseUnavailable:
            waits[0] += 1
            await asyncio.sleep(0.05)


async def test_pool_reconnects_after_its_connections_are_killed(pg_url: str, make: Factory) -> None:
    store = await Store.open(pg_url, line=LINE, result_payload=result_payload)
    try:
        first = await store.assign(make.request())
        assert first.kind == "issued"
        assert await terminate_backends(pg_url) >= 1  # the pooled connection
        # the dead connection fails, the pool is invalidated and the batch runs again on a new
        # connection: no error reaches the caller
        second = await store.assign(make.request())
        assert second.kind == "issued"
        assert store.reconnects == 1
        await store.end_attempt(
            make.start(), make.end(Outcome.TIMEOUT)
        )  # another write after the loss
        assert await store.audit().verify_audit_chain() == []
    finally:
        await store.close()


async def test_connections_killed_in_a_loop_lose_and_double_nothing(
    pg_url: str, make: Factory
) -> None:
    store = await Store.open(pg_url, line=LINE, result_payload=result_payload)
    stop = asyncio.Event()
    kills = 0

    async def killer() -> None:
        nonlocal kills
        while not stop.is_set():
            kills += await terminate_backends(pg_url)
            await asyncio.sleep(0.03)

    waits = [0]

    async def device(n: int) -> tuple[str, str, Any]:
        req = make.request(jig=f"j{n % 8}")
        result = await patiently(lambda: store.assign(req), waits)
        assert result.kind == "issued", result
        # a second answer for the same attempt (a retry after an unclear commit) is the first
        again = await patiently(lambda: store.assign(req), waits)
        assert (again.assignment_id, again.dac_serial) == (result.assignment_id, result.dac_serial)
        end = make.end(
            Outcome.PROVISIONED,
            assignment_id=result.assignment_id,
            status=AssignmentStatus.CONFIRMED,
        )
        await patiently(lambda: store.end_attempt(req.attempt, end), waits)
        return req.attempt.attempt_id, req.candidate.serial_hex, result

    task = asyncio.create_task(killer())
    try:
        results = []
        for wave in range(6):  # waves of concurrent devices, so the kills meet commits
            results += await asyncio.gather(*(device(wave * 8 + n) for n in range(8)))
    finally:
        stop.set()
        with contextlib.suppress(Exception):
            await task
    try:
        assert kills > 0
        # a dead connection is met either by the store (it runs the batch again on a new
        # one) or, when that dies too, by the caller (DatabaseUnavailable, retried)
        met = waits[0] + store.reconnects
        assert met > 0, "no call ever met a dead connection: the test proved nothing"
        audit = store.audit()
        records = [r async for r in audit.iter_assignment_records()]
        attempts = [r async for r in audit.iter_attempt_records()]
        assert len(records) == len(results) == 48
        assert {r["attempt_id"] for r in records} == {a for a, _, _ in results}
        assert {r["dac_serial"] for r in records} == {s for _, s, _ in results}
        assert {r["status"] for r in records} == {"confirmed"}
        assert len(attempts) == 48
        assert {a["outcome"] for a in attempts} == {"provisioned"}
        assert await audit.verify_audit_chain() == []
    finally:
        await store.close()


async def test_a_database_refusing_connections_is_unavailable_not_an_error(
    pg_url: str, make: Factory
) -> None:
    """What a restarting server or maintenance looks like: callers wait instead of failing."""
    from tests.e2e.pg import allow_connections

    store = await Store.open(pg_url, line=LINE, result_payload=result_payload)
    try:
        await asyncio.to_thread(allow_connections, pg_url, False)
        try:
            await terminate_backends(pg_url)
            req = make.request()
            with pytest.raises(DatabaseUnavailable, match="not currently accepting connections"):
                await store.assign(req)
        finally:
            await asyncio.to_thread(allow_connections, pg_url, True)
        assert (await store.assign(req)).kind == "issued"
    finally:
        await store.close()


@pytest.mark.parametrize(
    "exc",
    [
        asyncpg_error("CannotConnectNowError", "the database system is starting up"),
        asyncpg_error("AdminShutdownError", "terminating connection due to administrator command"),
        asyncpg_error("TooManyConnectionsError", "sorry, too many clients already"),
        asyncpg_error("ConnectionFailureError", "connection failure"),
    ],
    ids=lambda e: type(e).__name__,
)
def test_server_refusals_while_connecting_are_unavailable(exc: Exception) -> None:
    assert is_unavailable(exc)
    assert isinstance(translate_error(exc), DatabaseUnavailable)


def test_other_server_errors_are_not_unavailable() -> None:
    assert not is_unavailable(asyncpg_error("InvalidCatalogNameError", 'database "x" missing'))
    assert not is_unavailable(asyncpg_error("ObjectNotInPrerequisiteStateError", "other"))
