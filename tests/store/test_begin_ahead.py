"""PostgreSQL: the writer begins the next group commit's transaction ahead, so a device's record
costs three round trips (load, flush, COMMIT); the begun transaction is given back when the
line is idle, and one the server killed costs no record."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlsplit

import pytest

from linehost.mqtt.payloads import result_payload
from linehost.store import writer
from linehost.store.store import Store
from tests.conftest import _pg_params, _postgres_database
from tests.store.conftest import LINE, Factory, record_statements

pytestmark = [pytest.mark.postgres, pytest.mark.timeout(60)]


@pytest.fixture
async def pg_url() -> AsyncIterator[str]:
    async for url in _postgres_database():
        yield url


async def sessions(url: str, state: str) -> list[int]:
    """Backend pids of this test database's sessions in `state` (pg_stat_activity)."""
    import asyncpg

    admin = await asyncpg.connect(**_pg_params())
    try:
        rows = await admin.fetch(
            "SELECT pid FROM pg_stat_activity WHERE datname = $1 AND state = $2 "
            "AND pid <> pg_backend_pid()",
            urlsplit(url).path.lstrip("/"),
            state,
        )
    finally:
        await admin.close()
    return [int(r["pid"]) for r in rows]


async def terminate(pids: list[int]) -> None:
    import asyncpg

    admin = await asyncpg.connect(**_pg_params())
    try:
        for pid in pids:
            await admin.execute("SELECT pg_terminate_backend($1)", pid)
    finally:
        await admin.close()


async def test_a_devices_record_is_three_round_trips_once_the_line_runs(
    pg_url: str, make: Factory, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = await Store.open(pg_url, line=LINE, result_payload=result_payload)
    try:
        assert (await store.assign(make.request())).kind == "issued"
        # The next device's transaction is begun while the line waits.
        await eventually_async(lambda: has_sessions(pg_url, "idle in transaction"), within=5)
        sent = record_statements(monkeypatch)
        assert (await store.assign(make.request())).kind == "issued"
        committed = [c for c, q in sent if q.strip().upper().startswith("COMMIT")]
        assert len(committed) == 1, sent
        on_path = [q.strip().split()[0].upper() for c, q in sent if c == committed[0]]
        assert len(on_path) == 3, on_path  # the load, the flush and COMMIT
        assert "BEGIN" not in on_path, on_path
        assert on_path[-1].startswith("COMMIT")
    finally:
        await store.close()


async def test_an_idle_line_gives_its_begun_transaction_back(
    pg_url: str, make: Factory, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(writer, "SPARE_IDLE", 1.5)
    store = await Store.open(pg_url, line=LINE, result_payload=result_payload)
    try:
        assert (await store.assign(make.request())).kind == "issued"
        begun = await the_begun_session(pg_url)
        # 1.5 s without work: rolled back, and the session is plain idle.
        await eventually_async(lambda: no_sessions(pg_url, "idle in transaction"), within=5)
        assert begun in await sessions(pg_url, "idle")
        # The next device begins anew and is recorded.
        assert (await store.assign(make.request())).kind == "issued"
    finally:
        await store.close()
    assert await sessions(pg_url, "idle in transaction") == []


async def test_a_begun_transaction_the_server_killed_costs_no_record(
    pg_url: str, make: Factory
) -> None:
    store = await Store.open(pg_url, line=LINE, result_payload=result_payload)
    try:
        assert (await store.assign(make.request())).kind == "issued"
        begun = await the_begun_session(pg_url)
        await terminate([begun])  # a DBA's kill, or idle_in_transaction_session_timeout
        request = make.request()
        result = await store.assign(request)
        assert result.kind == "issued"
        again = await store.assign(request)  # the same attempt: the one record, not a second
        assert again.assignment_id == result.assignment_id
        assert await store.audit().verify_audit_chain() == []
    finally:
        await store.close()


async def the_begun_session(url: str) -> int:
    """The pid of the one session `idle in transaction` (the writer's next transaction)."""
    found: list[int] = []

    async def one() -> bool:
        found[:] = await sessions(url, "idle in transaction")
        return len(found) == 1

    await eventually_async(one, within=5)
    return found[0]


async def no_sessions(url: str, state: str) -> bool:
    return await sessions(url, state) == []


async def has_sessions(url: str, state: str) -> bool:
    return await sessions(url, state) != []


async def eventually_async(check: Any, *, within: float) -> None:
    """Poll the coroutine function `check` until it returns True, or fail after `within` s."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while not await check():
        if loop.time() > deadline:
            pytest.fail(f"{check} did not become true within {within} s")
        await asyncio.sleep(0.05)
