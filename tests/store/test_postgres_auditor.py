"""Auditor access: the documented views on both engines, and deploy/sql/auditor-role.sql applied
with psql to a real PostgreSQL database gives a role that reads them and changes nothing."""

from __future__ import annotations

import asyncio
import secrets
import shutil
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from sqlalchemy import text

from linehost.audit_cli import ASSIGNMENT_FIELDS, ATTEMPT_FIELDS
from linehost.protocol.outcomes import Outcome
from linehost.store.audit import Audit
from linehost.store.engine import create_engine
from tests.conftest import _pg_params, _postgres_database
from tests.e2e.harness import linehost
from tests.store.realdacs import dev_pki, provision, write_config

ROLE_SQL = Path(__file__).parents[2] / "deploy" / "sql" / "auditor-role.sql"
PLACES = [("st1", "j1", Outcome.PROVISIONED), ("st1", "j2", Outcome.DEVICE_ERROR),
          ("st2", "j3", Outcome.TIMEOUT)]  # fmt: skip


async def _view(url: str, sql: str) -> tuple[list[str], list[dict[str, Any]]]:
    engine = create_engine(url)
    try:
        async with engine.connect() as conn:
            result = await conn.execute(text(sql))
            return list(result.keys()), [dict(r) for r in result.mappings()]
    finally:
        await engine.dispose()


async def test_views_hold_the_contract_records(db_url: str, tmp_path: Path) -> None:
    devices = await provision(db_url, dev_pki(tmp_path / "pki"), "line-a", PLACES)
    columns, rows = await _view(db_url, "SELECT * FROM assignments_v ORDER BY issued_at")
    assert columns == ASSIGNMENT_FIELDS
    audit = await Audit.open(db_url)
    try:
        records = [r async for r in audit.iter_assignment_records()]
        attempts = [r async for r in audit.iter_attempt_records()]
    finally:
        await audit.close()
    assert len(rows) == len(records) == 2
    for row, record in zip(rows, records, strict=True):
        for name in ASSIGNMENT_FIELDS:  # times differ in type (SQLite gives text): not compared
            if not name.endswith("_at"):
                assert row[name] == record[name], name
    columns, rows = await _view(db_url, "SELECT * FROM attempts_v ORDER BY started_at")
    assert columns == ATTEMPT_FIELDS
    assert [r["uid"] for r in rows] == [d.uid for d in devices] == [a["uid"] for a in attempts]
    assert [r["outcome"] for r in rows] == ["provisioned", "device_error", "timeout"]


@pytest.fixture
async def pg_url() -> AsyncIterator[str]:
    async for url in _postgres_database():
        yield url


def _psql(database: str, *args: str, user: str | None = None) -> subprocess.CompletedProcess[str]:
    params = _pg_params()
    return subprocess.run(
        ["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-h", str(params["host"]),
         "-p", str(params["port"]), "-U", user or str(params["user"]), "-d", database, *args],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip


@pytest.mark.postgres
@pytest.mark.timeout(120)
async def test_auditor_role_reads_and_cannot_change(pg_url: str, tmp_path: Path) -> None:
    import asyncpg

    if shutil.which("psql") is None:
        pytest.skip("psql is not installed")
    pki = dev_pki(tmp_path / "pki")
    devices = await provision(pg_url, pki, "line-a", PLACES)
    database = urlsplit(pg_url).path.lstrip("/")
    # Roles belong to the whole server: a name of our own, so concurrent runs do not meet.
    group = f"linehost_auditor_{secrets.token_hex(4)}"
    login = f"{group}_alice"
    script = tmp_path / "auditor-role.sql"
    script.write_text(ROLE_SQL.read_text().replace("linehost_auditor", group))
    params = _pg_params()
    admin = await asyncpg.connect(**params)
    try:
        for _ in range(2):  # idempotent: a second run changes nothing and does not fail
            applied = await asyncio.to_thread(_psql, database, "-f", str(script))
            assert applied.returncode == 0, applied.stderr
        await admin.execute(f'CREATE ROLE "{login}" LOGIN IN ROLE "{group}"')
        auditor = await asyncpg.connect(**{**params, "user": login, "database": database})
        try:
            got = await auditor.fetch("SELECT uid, status FROM assignments_v ORDER BY issued_at")
            assert [(r["uid"], r["status"]) for r in got] == [
                (devices[0].uid, "confirmed"),
                (devices[1].uid, "failed"),
            ]
            assert await auditor.fetchval("SELECT count(*) FROM attempts_v") == 3
            assert await auditor.fetchval("SELECT count(*) FROM audit_log") > 0
            for sql in (
                "DELETE FROM attempts_v",
                "UPDATE assignments SET status = 'failed'",
                "DELETE FROM audit_log",
                "INSERT INTO audit_log (line) VALUES ('x')",
                "TRUNCATE attempts",
                "SELECT * FROM outbox",
                "SELECT passcode_sealed FROM onboarding",
                "CREATE TABLE mine (x int)",
            ):
                with pytest.raises(asyncpg.InsufficientPrivilegeError):
                    await auditor.execute(sql)
            # assignments_v joins the revocation ledger (0010), so PostgreSQL refuses writes to
            # it as a view before it looks at privileges: either refusal keeps the auditor out
            for sql in (
                "INSERT INTO assignments_v (uid) VALUES ('00')",
                "UPDATE assignments_v SET status = 'failed'",
                "INSERT INTO revocations (dac_serial) VALUES ('00')",
                "DELETE FROM crl_numbers",
            ):
                with pytest.raises(
                    (asyncpg.InsufficientPrivilegeError, asyncpg.ObjectNotInPrerequisiteStateError)
                ):
                    await auditor.execute(sql)
        finally:
            await auditor.close()
        # the auditor's own login runs `linehost audit verify` end to end
        auditor_url = pg_url.replace(f"//{params['user']}@", f"//{login}@", 1)
        config = write_config(tmp_path / "auditor.toml", pki, auditor_url)
        verified = await asyncio.to_thread(linehost, "audit", "--config", config, "verify")
        assert "audit verify: OK — 2 DAC(s)" in verified.stdout
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
        await admin.execute(f'DROP ROLE IF EXISTS "{login}"')
        await admin.execute(f'DROP ROLE IF EXISTS "{group}"')
        await admin.close()
