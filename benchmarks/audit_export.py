"""`linehost audit export` on a large database: SQLite and PostgreSQL, 100,000 assignments.

Builds each database at the current schema (`linehost db upgrade`), fills it with bulk SQL
(one INSERT ... SELECT per table: generate_series on PostgreSQL, a recursive CTE on SQLite),
then times the auditor's commands as an auditor runs them (subprocesses, output to /dev/null):
the full export, the attempt export, filtered exports and one-device lookups. Prints one JSON
line per engine. The PostgreSQL database is created for the run and dropped afterwards.

    .venv/bin/python benchmarks/audit_export.py --count 100000 --engine both
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from sqlalchemy import text

from linehost.store.engine import create_engine
from linehost.store.migrate import upgrade_cli

PG_SERVER = os.environ.get("LINEHOST_TEST_PG", "postgresql://postgres@127.0.0.1:5432")
LINEHOST = [sys.executable, "-m", "linehost.cli"]
T0 = "2026-01-01 00:00:00"
# About the size of a real Matter DAC in PEM.
PEM = "-----BEGIN CERTIFICATE-----\n" + ("A" * 64 + "\n") * 11 + "-----END CERTIFICATE-----\n"
PAI_SHA = "ab" * 32

_PG_ASSIGNMENTS = """
INSERT INTO assignments (uid, status, dac_serial, dac_sha256, dac_pem, public_key_sha256,
    pai_sha256, vid, pid, line, station, jig, attempt_id, work_order, issued_at, confirmed_at,
    updated_at, bundle_entry_id)
SELECT upper(lpad(to_hex(g), 16, '0')),
       CASE WHEN g % 50 = 0 THEN 'failed' ELSE 'confirmed' END,
       upper(to_hex(g::bigint + 4096)), md5('d' || g) || md5('e' || g), :pem,
       md5('k' || g) || md5('l' || g), :pai, 'FFF1', '8000',
       'line-' || (g % 2 + 1), 'st' || (g % 8 / 2 + 1), 'j' || (g % 8 + 1),
       md5('a' || g)::uuid::text, NULL,
       timestamptz '2026-01-01 00:00:00+00' + g * interval '1 second',
       CASE WHEN g % 50 = 0 THEN NULL
            ELSE timestamptz '2026-01-01 00:00:05+00' + g * interval '1 second' END,
       timestamptz '2026-01-01 00:00:05+00' + g * interval '1 second', NULL
FROM generate_series(1, :n) AS g
"""
_PG_ATTEMPTS = """
INSERT INTO attempts (attempt_id, line, station, jig, uid, outcome, detail, device_code,
    dac_serial, assignment_id, work_order, started_at, ended_at, transcript)
SELECT attempt_id, line, station, jig, uid,
       CASE WHEN status = 'failed' THEN 'device_error' ELSE 'provisioned' END, '',
       CASE WHEN status = 'failed' THEN 1 END, dac_serial, id, NULL,
       issued_at - interval '2 seconds', updated_at, ''
FROM assignments
"""
_SQLITE_ASSIGNMENTS = """
WITH RECURSIVE g(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM g WHERE n < :n)
INSERT INTO assignments (uid, status, dac_serial, dac_sha256, dac_pem, public_key_sha256,
    pai_sha256, vid, pid, line, station, jig, attempt_id, work_order, issued_at, confirmed_at,
    updated_at, bundle_entry_id)
SELECT printf('%016X', n),
       CASE WHEN n % 50 = 0 THEN 'failed' ELSE 'confirmed' END,
       printf('%X', n + 4096), printf('%064x', n), :pem, printf('%064x', n + 1000000000),
       :pai, 'FFF1', '8000',
       'line-' || (n % 2 + 1), 'st' || (n % 8 / 2 + 1), 'j' || (n % 8 + 1),
       printf('%08x-0000-4000-8000-%012x', n, n), NULL,
       datetime(:t0, '+' || n || ' seconds') || '.000000',
       CASE WHEN n % 50 = 0 THEN NULL
            ELSE datetime(:t0, '+' || (n + 5) || ' seconds') || '.000000' END,
       datetime(:t0, '+' || (n + 5) || ' seconds') || '.000000', NULL
FROM g
"""
_SQLITE_ATTEMPTS = """
INSERT INTO attempts (attempt_id, line, station, jig, uid, outcome, detail, device_code,
    dac_serial, assignment_id, work_order, started_at, ended_at, transcript)
SELECT attempt_id, line, station, jig, uid,
       CASE WHEN status = 'failed' THEN 'device_error' ELSE 'provisioned' END, '',
       CASE WHEN status = 'failed' THEN 1 END, dac_serial, id, NULL,
       datetime(issued_at, '-2 seconds') || '.000000', updated_at, ''
FROM assignments
"""


def main() -> None:
    """Parse arguments, measure each engine, print one JSON line per engine."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=100_000, help="assignments (100000)")
    parser.add_argument("--engine", choices=["sqlite", "postgres", "both"], default="both")
    args = parser.parse_args()
    engines = ["sqlite", "postgres"] if args.engine == "both" else [args.engine]
    with tempfile.TemporaryDirectory(prefix="linehost-bench-") as tmp:
        work = Path(tmp)
        for name in engines:
            print(json.dumps(bench(name, args.count, work)), flush=True)


def bench(engine: str, count: int, work: Path) -> dict[str, Any]:
    """Build, fill and query one database; the timings in seconds."""
    if engine == "sqlite":
        url = f"sqlite+aiosqlite:///{work / 'bench.db'}"
        return measure(engine, url, count, work)
    name = f"linehost_bench_{secrets.token_hex(4)}"
    asyncio.run(_admin(f'CREATE DATABASE "{name}"'))
    try:
        parts = urlsplit(PG_SERVER)
        return measure(engine, f"postgresql+asyncpg://{parts.netloc}/{name}", count, work)
    finally:
        asyncio.run(_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


def measure(engine: str, url: str, count: int, work: Path) -> dict[str, Any]:
    upgrade_cli(url)
    started = time.perf_counter()
    asyncio.run(fill(url, count, engine))
    result: dict[str, Any] = {
        "engine": engine,
        "assignments": count,
        "fill_s": round(time.perf_counter() - started, 2),
    }
    config = work / f"{engine}.toml"
    config.write_text(
        f'[line]\nname = "line-1"\n[database]\nurl = "{url}"\n'
        '[pki]\npai_cert = "pai.pem"\npai_key = "pai.key"\nvid = "FFF1"\npid = "8000"\n'
        '[[jigs]]\nname = "j1"\nstation = "st1"\nport = "/nonexistent"\n'
    )
    uid, serial = f"{count // 2:016X}", f"{count // 2 + 4096:X}"
    commands = {
        "export_jsonl": ["export", "--format", "jsonl"],
        "export_csv": ["export", "--format", "csv"],
        "attempts_jsonl": ["attempts", "--format", "jsonl"],
        "export_station": ["export", "--station", "st3"],
        "export_one_hour": ["export", "--since", "2026-01-01T10:00", "--until", "2026-01-01T11:00"],
        "attempts_failed": ["attempts", "--outcome", "device_error"],
        "uid_history": ["uid", uid],
        "dac_lookup": ["dac", serial],
    }
    for label, argv in commands.items():
        seconds, err = run([*LINEHOST, "audit", "--config", str(config), *argv])
        result[f"{label}_s"] = round(seconds, 2)
        if label == "export_jsonl":
            assert f"{count} assignment record(s)" in err, err
    result["export_records_per_s"] = round(count / result["export_jsonl_s"])
    return result


def run(argv: list[str]) -> tuple[float, str]:
    """Run one command with its output thrown away; (seconds, stderr)."""
    started = time.perf_counter()
    done = subprocess.run(
        argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, check=False
    )
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} exited {done.returncode}: {done.stderr[-2000:]}")
    return seconds, done.stderr


async def fill(url: str, count: int, engine: str) -> None:
    """`count` assignments (every 50th failed, the rest confirmed) and one attempt each."""
    db = create_engine(url)
    try:
        async with db.begin() as conn:
            if engine == "sqlite":
                params = {"n": count, "pem": PEM, "pai": PAI_SHA, "t0": T0}
                await conn.execute(text(_SQLITE_ASSIGNMENTS), params)
                await conn.execute(text(_SQLITE_ATTEMPTS))
            else:
                await conn.execute(text(_PG_ASSIGNMENTS), {"n": count, "pem": PEM, "pai": PAI_SHA})
                await conn.execute(text(_PG_ATTEMPTS))
                await conn.execute(text("ANALYZE assignments"))
                await conn.execute(text("ANALYZE attempts"))
    finally:
        await db.dispose()


async def _admin(sql: str) -> None:
    import asyncpg

    parts = urlsplit(PG_SERVER)
    conn = await asyncpg.connect(
        host=parts.hostname or "127.0.0.1",
        port=parts.port or 5432,
        user=parts.username or "postgres",
        password=parts.password,
        database="postgres",
    )
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


if __name__ == "__main__":
    main()
