"""`linehost pki revoke --work-order` of 10,000 DACs, then `linehost pki crl` over them.

Builds a development PKI and a SQLite database at the current schema, fills it with one work
order of COUNT assignments (bulk INSERT: 159-bit random serials under the PAI's SHA-256, as the
local issuer records them), then times both commands as an operator runs them (subprocesses).
The goal: each within 30 s. Prints one JSON line.

    .venv/bin/python benchmarks/revocation.py --count 10000
"""

from __future__ import annotations

import argparse
import hashlib
import json
import secrets
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization

LINEHOST = [sys.executable, "-m", "linehost.cli"]
WORK_ORDER = "WO-BENCH"
PEM = "-----BEGIN CERTIFICATE-----\n" + ("A" * 64 + "\n") * 11 + "-----END CERTIFICATE-----\n"


def main() -> None:
    """Parse arguments, run, print one JSON line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=10_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="linehost-bench-") as tmp:
        print(json.dumps(bench(Path(tmp), args.count)), flush=True)


def bench(work: Path, count: int) -> dict[str, Any]:
    """Seed, revoke, sign; the timings in seconds."""
    run("pki", "init-dev", "--out", work / "pki")
    db = work / "bench.db"
    config = work / "line.toml"
    config.write_text(
        f'[line]\nname = "line-1"\n[database]\nurl = "sqlite+aiosqlite:///{db}"\n'
        f'[pki]\npai_cert = "{work / "pki/pai.pem"}"\npai_key = "{work / "pki/pai.key"}"\n'
        'vid = "FFF1"\npid = "8000"\n'
        '[[jigs]]\nname = "j1"\nstation = "st1"\nport = "/nonexistent"\n'
    )
    run("db", "upgrade", "--config", config)
    pai = x509.load_pem_x509_certificate((work / "pki/pai.pem").read_bytes())
    pai_sha = hashlib.sha256(pai.public_bytes(serialization.Encoding.DER)).hexdigest()
    started = time.perf_counter()
    seed(db, count, pai_sha)
    result: dict[str, Any] = {"dacs": count, "seed_s": round(time.perf_counter() - started, 2)}
    started = time.perf_counter()
    revoked = run(
        "pki", "revoke", "--config", config, "--work-order", WORK_ORDER,
        "--reason", "cessationOfOperation",
    )  # fmt: skip
    result["revoke_s"] = round(time.perf_counter() - started, 2)
    assert f"{count} DAC(s) revoked" in revoked.stdout, revoked.stdout[-500:]
    started = time.perf_counter()
    signed = run("pki", "crl", "--config", config, "--out", work / "pai.crl", "--der")
    result["crl_s"] = round(time.perf_counter() - started, 2)
    assert f"{count} revoked DAC(s)" in signed.stdout, signed.stdout
    crl = x509.load_der_x509_crl((work / "pai.crl").read_bytes())
    assert len(crl) == count
    result["crl_bytes"] = (work / "pai.crl").stat().st_size
    result["within_30s"] = result["revoke_s"] < 30 and result["crl_s"] < 30
    return result


def seed(db: Path, count: int, pai_sha: str) -> None:
    """COUNT confirmed assignments of one work order (no audit rows: revocation adds its own)."""
    now = "2026-12-01 00:00:00.000000"
    rows = []
    for n in range(count):
        serial = f"{secrets.randbits(159) | 1 << 150:X}"
        rows.append(
            (
                f"{n:016X}", "confirmed", serial, secrets.token_hex(32), PEM,
                secrets.token_hex(32), pai_sha, "FFF1", "8000", "line-1", "st1", "j1",
                f"{n:08x}-0000-4000-8000-{n:012x}", WORK_ORDER, now, now, now,
            )
        )  # fmt: skip
    with sqlite3.connect(db) as conn:
        conn.executemany(
            "INSERT INTO assignments (uid, status, dac_serial, dac_sha256, dac_pem, "
            "public_key_sha256, pai_sha256, vid, pid, line, station, jig, attempt_id, "
            "work_order, issued_at, confirmed_at, updated_at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            rows,
        )


def run(*args: str | Path) -> subprocess.CompletedProcess[str]:
    """One linehost command; raise with its output when it fails."""
    done = subprocess.run([*LINEHOST, *map(str, args)], capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"linehost {args[:2]} failed: {done.stderr[-2000:]}")
    return done


if __name__ == "__main__":
    main()
