"""Many lines on one PostgreSQL: N `linehost run` processes (each its own line and simulator)
on one database; one JSON line per N.

Per N it reports the aggregate devices/s (all devices / (last finish - first sync) over every
simulator) and what the database paid per device:

- pg_cpu_ms_per_device: user+system CPU of the PostgreSQL backends serving the benchmark
  database (from /proc/<pid>/stat of the pids in pg_stat_activity; the server runs here), plus
  the server's background writer, checkpointer, WAL writer and walsender (pg_stat_activity
  backend_type), from the first device to the last;
- wal_bytes_per_device: WAL records of the benchmark database alone (pg_walinspect over the
  pg_current_wal_lsn() range: records on its relations plus its commit records; full-page
  images shown apart), and server_wal_bytes_per_device: the whole range (other databases on
  this machine included);
- commits_per_device: xact_commit delta of the database (pg_stat_database);
- statements_per_device: SQL statements the hosts sent (their own count, LINEHOST_LATENCY_FILE:
  pg_stat_statements is not preloaded on this server);
- host_cpu_ms_per_device: the line hosts' CPU.

    python benchmarks/multiline.py --lines 1,2,4 --jigs 16 --devices 640 --baud 115200
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.line import (  # noqa: E402
    CLK_TCK,
    Simulator,
    _ts,
    create_pg_database,
    drop_pg_database,
    machine_busy,
    percentiles,
    run_figures,
    wait_log,
    workdir,
    write_config,
)

#: Server processes whose work is shared by every database (counted as the server's cost).
SERVER_PROCESSES = ("background writer", "checkpointer", "walwriter", "autovacuum launcher")


def proc_cpu(pid: int) -> float:
    """user + system CPU seconds of a process; 0 when it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def plain_url(url: str) -> str:
    return url.replace("postgresql+asyncpg", "postgresql")


async def pg_snapshot(url: str, name: str) -> dict[str, Any]:
    """The server's counters now: WAL position, commits, and its processes' CPU."""
    import asyncpg

    conn = await asyncpg.connect(plain_url(url))
    try:
        lsn = await conn.fetchval("SELECT pg_current_wal_lsn() - '0/0'::pg_lsn")
        commits = await conn.fetchval(
            "SELECT xact_commit FROM pg_stat_database WHERE datname = $1", name
        )
        rows = await conn.fetch(
            "SELECT pid, datname, backend_type FROM pg_stat_activity "
            "WHERE (datname = $1 AND pid <> pg_backend_pid()) OR backend_type = ANY($2)",
            name,
            list(SERVER_PROCESSES),
        )
    finally:
        await conn.close()
    cpu = {int(r["pid"]): proc_cpu(int(r["pid"])) for r in rows}
    return {"wal": int(lsn), "commits": int(commits or 0), "cpu": cpu}


class WalMeter:
    """WAL of one database, read in slices while the run goes on (this busy server recycles
    its WAL segments within seconds: the whole range is not there to read at the end)."""

    def __init__(self, url: str, name: str, start: int) -> None:
        self.url, self.name, self.at = url, name, start
        self.total: dict[str, int] | None = {"bytes": 0, "fpi": 0, "records": 0}

    def read_to_now(self) -> None:
        if self.total is None:
            return
        got = asyncio.run(wal_of_database(self.url, self.name, self.at))
        if got is None:
            self.total = None  # pg_walinspect missing, or a segment already recycled
            return
        self.at = got.pop("end")
        for key, value in got.items():
            self.total[key] += value


async def wal_of_database(url: str, name: str, start: int) -> dict[str, int] | None:
    """WAL bytes and records from `start` to now that belong to database `name`: records
    touching its relations, and the commit records of its transactions (pg_walinspect);
    None when the extension is missing or the WAL is gone."""
    import asyncpg

    conn = await asyncpg.connect(plain_url(url))
    try:
        try:
            await conn.execute("CREATE EXTENSION IF NOT EXISTS pg_walinspect")
        except asyncpg.PostgresError:
            return None
        oid = await conn.fetchval("SELECT oid FROM pg_database WHERE datname = $1", name)
        # Up to what is flushed: pg_walinspect refuses a "future" end.
        end = int(await conn.fetchval("SELECT pg_current_wal_flush_lsn() - '0/0'::pg_lsn"))
        if end <= start:
            return {"bytes": 0, "fpi": 0, "records": 0, "end": start}
        try:
            row = await conn.fetchrow(
                """
            WITH r AS (
                SELECT xid, resource_manager, record_length, fpi_length, block_ref
                FROM pg_get_wal_records_info($1::text::pg_lsn, $2::text::pg_lsn)
            ), mine AS (
                SELECT DISTINCT xid FROM r WHERE block_ref LIKE $3 AND xid::text <> '0'
            )
            SELECT coalesce(sum(record_length), 0) AS bytes,
                   coalesce(sum(fpi_length), 0) AS fpi, count(*) AS records
            FROM r
            WHERE block_ref LIKE $3
               OR (resource_manager = 'Transaction' AND xid IN (SELECT xid FROM mine))
            """,
                _lsn(start),
                _lsn(end),
                f"%/{oid}/%",
            )
        except asyncpg.PostgresError as exc:
            print(f"pg_walinspect: {exc}", file=sys.stderr)
            return None
    finally:
        await conn.close()
    return {
        "bytes": int(row["bytes"]),
        "fpi": int(row["fpi"]),
        "records": int(row["records"]),
        "end": end,
    }


def _lsn(value: int) -> str:
    return f"{value >> 32:X}/{value & 0xFFFFFFFF:X}"


def overlap_rate(per_line: list[list[dict[str, Any]]]) -> tuple[float | None, float]:
    """Devices finished per second while every line was provisioning (from the latest first
    sync of any line to the earliest last finish), and that window's length."""
    starts, ends = [], []
    for records in per_line:
        ok = [r for r in records if r["stored_dac_serial"]]
        if not ok:
            return None, 0.0
        starts.append(min(_ts(r["first_sync_at"]) for r in records if r["first_sync_at"]))
        ends.append(max(_ts(r["finished_at"]) for r in ok))
    t0, t1 = max(starts), min(ends)
    if t1 <= t0:
        return None, 0.0
    done = sum(
        1
        for records in per_line
        for r in records
        if r["stored_dac_serial"] and t0 <= _ts(r["finished_at"]) <= t1
    )
    return round(done / (t1 - t0), 1), round(t1 - t0, 2)


def cpu_delta(before: dict[int, float], after: dict[int, float]) -> float:
    """CPU seconds spent between two snapshots (a backend born in between counts from 0)."""
    return sum(after[pid] - before.get(pid, 0.0) for pid in after)


def bench(args: argparse.Namespace, lines: int, work: Path, pki: Path) -> dict[str, Any]:
    per_jig = math.ceil(args.devices / args.jigs)
    url, name = create_pg_database()
    sims: list[Simulator] = []
    hosts: list[subprocess.Popen[Any]] = []
    try:
        for n in range(lines):
            line_dir = work / f"n{lines}-line{n + 1}"
            line_dir.mkdir(parents=True)
            # Each line its own devices: one UID on two lines is refused (already_provisioned).
            sim = Simulator(line_dir, args.jigs, per_jig, args.baud, seed=1000 * lines + n + 1)
            sim.start()
            # Held until every host is up, so that the lines provision at the same time.
            assert sim.proc is not None
            sim.proc.send_signal(signal.SIGSTOP)
            sims.append(sim)
            config = line_dir / "line.toml"
            write_config(
                config, pki, sim.ports, url, args.mqtt, 1.0, args.baud or 115200,
                line=f"line{n + 1}",
            )  # fmt: skip
            log = line_dir / "host.log"
            with log.open("w") as out:
                host = subprocess.Popen(
                    [sys.executable, "-m", "linehost.cli", "--log-level", "info", "run",
                     "--config", str(config)],
                    stdout=out, stderr=subprocess.STDOUT, cwd=args.root,
                    env={**os.environ, "LINEHOST_LATENCY_FILE": str(line_dir / "latency.json")},
                )  # fmt: skip
            hosts.append(host)
            if n == 0:  # it migrates the empty database; the others start together after it
                wait_log(log, "line_started", host)
        for n, host in enumerate(hosts):
            wait_log(work / f"n{lines}-line{n + 1}" / "host.log", "line_started", host)
        snap0 = asyncio.run(pg_snapshot(url, name))
        for sim in sims:
            assert sim.proc is not None
            sim.proc.send_signal(signal.SIGCONT)
        host0 = [proc_cpu(h.pid) for h in hosts]
        busy0 = machine_busy()
        meter = WalMeter(url, name, snap0["wal"])
        deadline = time.monotonic() + args.timeout
        next_read = time.monotonic() + 1.0
        while sum(s.done_count() for s in sims) < sum(s.total for s in sims):
            if any(h.poll() is not None for h in hosts):
                raise SystemExit("a host exited early")
            if time.monotonic() > deadline:
                raise SystemExit("timed out")
            if time.monotonic() > next_read:
                meter.read_to_now()
                next_read = time.monotonic() + 1.0
            time.sleep(0.2)
        meter.read_to_now()
        snap1 = asyncio.run(pg_snapshot(url, name))
        host1 = [proc_cpu(h.pid) for h in hosts]
        busy1 = machine_busy()
        for h in hosts:
            h.send_signal(signal.SIGTERM)
        for h in hosts:
            if h.wait(120) != 0:
                raise SystemExit(f"host exited {h.returncode}")
        records = [r for s in sims for r in s.records()]
        figures = run_figures(records)
        together, overlap = overlap_rate([s.records() for s in sims])
        per_line = [run_figures(s.records())["devices_per_s"] for s in sims]
        devices = figures["devices"]
        probes = [json.loads((work / f"n{lines}-line{n + 1}" / "latency.json").read_text())
                  for n in range(lines)]  # fmt: skip
        statements = sum(p.get("statements", 0) for p in probes)
        commits_host = sum(p.get("commits", 0) for p in probes)
        pg_cpu = cpu_delta(snap0["cpu"], snap1["cpu"])
        wal = meter.total

        def per_device(value: float, digits: int = 3) -> float | None:
            return round(value / devices, digits) if devices else None

        return {
            "root": str(args.root),
            "lines": lines,
            "jigs_per_line": args.jigs,
            "baud": args.baud,
            "mqtt": "on" if args.mqtt else "off",
            "devices": devices,
            "seconds": figures["seconds"],
            # Lines start a few seconds apart: the rate while all of them were provisioning.
            "devices_per_s": together,
            "overlap_s": overlap,
            "devices_per_s_per_line": per_line,
            "pg_cpu_ms_per_device": per_device(pg_cpu * 1000),
            # The server's whole WAL (other databases on this machine included) and ours alone.
            "server_wal_bytes_per_device": per_device(snap1["wal"] - snap0["wal"], 0),
            "wal_bytes_per_device": None if wal is None else per_device(wal["bytes"], 0),
            "wal_fpi_bytes_per_device": None if wal is None else per_device(wal["fpi"], 0),
            "wal_records_per_device": None if wal is None else per_device(wal["records"], 2),
            "commits_per_device": per_device(snap1["commits"] - snap0["commits"]),
            "host_commits_per_device": per_device(commits_host),
            "statements_per_device": per_device(statements, 2),
            "host_cpu_ms_per_device": per_device((sum(host1) - sum(host0)) * 1000),
            "csr_to_dac_ms": percentiles([x for p in probes for x in p["csr_to_dac"]]),
            "finish_to_commit_ms": percentiles([x for p in probes for x in p["finish_to_commit"]]),
            "machine_busy": round((busy1[0] - busy0[0]) / (busy1[1] - busy0[1]), 3),
            "pg_backends": len(snap1["cpu"]),
        }
    finally:
        for sim in sims:
            if sim.proc is not None and sim.proc.poll() is None:
                sim.proc.send_signal(signal.SIGCONT)
        for h in hosts:
            if h.poll() is None:
                h.kill()
                h.wait()
        for s in sims:
            s.stop()
        with contextlib.suppress(Exception):
            drop_pg_database(name)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python benchmarks/multiline.py",
        description="N linehost lines on one PostgreSQL: aggregate rate and database cost/device.",
    )
    parser.add_argument("--lines", default="1,2,4", help="comma-separated N values (1,2,4)")
    parser.add_argument("--jigs", type=int, default=16, help="jigs per line (16)")
    parser.add_argument("--devices", type=int, default=640, help="devices per line (640)")
    parser.add_argument("--baud", type=int, default=None, help="simulated wire speed (none)")
    parser.add_argument("--mqtt", action="store_true", help="MQTT results and states on")
    parser.add_argument("--timeout", type=float, default=900)
    parser.add_argument("--keep", type=Path, default=None, help="keep the work files in DIR")
    parser.add_argument(
        "--root",
        type=Path,
        default=ROOT,
        help="run the hosts from this checkout (e.g. a worktree of main, for a before figure)",
    )
    args = parser.parse_args(argv)
    from linehost.pki.devpki import init_dev

    with workdir(args.keep) as work:
        pki = work / "pki"
        init_dev(pki)
        os.environ["BENCH_PKI"] = str(pki)
        for lines in [int(x) for x in args.lines.split(",")]:
            print(json.dumps(bench(args, lines, work, pki)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
