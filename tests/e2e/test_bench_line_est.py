"""benchmarks/line.py --compare-issuers on a tiny line: one JSON line per issuer, and the est
run really went through its own `linehost gateway` (every DAC the line recorded is one the
gateway recorded)."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.timeout(180)
def test_line_bench_compares_the_local_issuer_with_the_gateway(tmp_path: Path) -> None:
    done = subprocess.run(
        [
            sys.executable, str(ROOT / "benchmarks" / "line.py"), "--jigs", "2", "--devices", "4",
            "--database", "sqlite", "--no-mqtt", "--sync-interval", "0.2", "--compare-issuers",
            "--keep", str(tmp_path),
        ],
        capture_output=True, text=True, timeout=170, check=False, cwd=ROOT,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr[-3000:]
    local, est = (json.loads(line) for line in done.stdout.splitlines())
    assert (local["issuer"], est["issuer"]) == ("local", "est")
    assert local["devices"] == est["devices"] == 4
    assert "gateway_cpu_ms_per_device" in est
    assert "gateway_cpu_ms_per_device" not in local
    assert "warning" not in local
    assert "warning" not in est
    with sqlite3.connect(tmp_path / "est" / "linehost.db") as conn:
        line_dacs = {r[0] for r in conn.execute("SELECT dac_sha256 FROM assignments")}
    with sqlite3.connect(tmp_path / "est" / "gateway" / "gateway.db") as conn:
        gateway_dacs = {r[0] for r in conn.execute("SELECT dac_sha256 FROM issuances")}
    assert len(line_dacs) == 4
    assert line_dacs == gateway_dacs
    assert not (tmp_path / "local" / "gateway").exists()  # the local run signed by itself
