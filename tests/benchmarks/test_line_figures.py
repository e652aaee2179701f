"""benchmarks/line.py's cycle time: the time between two finishes on a jig less the swap between
them, so the wire ratio means the same with operators' swaps (--swap-jitter) as without."""

from __future__ import annotations

import importlib.util
import sqlite3
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from linehost.pki.devpki import init_dev

ROOT = Path(__file__).resolve().parents[2]
T0 = datetime(2026, 12, 7, 12, 0, tzinfo=UTC)


@pytest.fixture(scope="module")
def line_bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_line", ROOT / "benchmarks" / "line.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_line"] = module
    spec.loader.exec_module(module)
    return module


def device(jig: str, index: int, arrived: float, finished: float, left: float,
           *, ok: bool = True) -> dict[str, Any]:  # fmt: skip
    def at(seconds: float) -> str:
        return (T0 + timedelta(seconds=seconds)).isoformat()

    return {
        "jig": jig, "index": index, "stored_dac_serial": "AB" if ok else None,
        "arrived_at": at(arrived), "first_sync_at": at(arrived + 0.01),
        "finished_at": at(finished), "left_at": at(left),
    }  # fmt: skip


def test_the_cycle_leaves_out_the_time_the_jig_stood_empty(line_bench: ModuleType) -> None:
    records = [
        # j1: 0.2 s in the jig each, swaps of 0.5 and 0.1 s between them.
        device("j1", 0, 0.0, 0.19, 0.2),
        device("j1", 1, 0.7, 0.89, 0.9),
        device("j1", 2, 1.0, 1.19, 1.2),
        # j2: instant swaps, 0.3 s per device; the failed device breaks the pairs it is in.
        device("j2", 0, 0.0, 0.29, 0.3),
        device("j2", 1, 0.3, 0.59, 0.6, ok=False),
        device("j2", 2, 0.6, 0.89, 0.9),
        device("j2", 3, 0.9, 1.19, 1.2),
    ]
    figures = line_bench.run_figures(records)
    # j1: (0.89 - 0.19 - 0.5) and (1.19 - 0.89 - 0.1); j2: (1.19 - 0.89 - 0).
    assert figures["per_device_s"] == pytest.approx((0.2 + 0.2 + 0.3) / 3, abs=1e-5)
    assert figures["empty_jig_s"] == pytest.approx((0.5 + 0.1 + 0.0) / 3, abs=1e-5)
    assert figures["devices"] == 6
    assert figures["devices_seen"] == 7


def test_both_hosts_wire_ratio_is_the_cycle_over_the_conversation_at_the_baud(
    line_bench: ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The thread-per-port host's ratio (its own SQLite table) uses the same wire bound."""
    pki = init_dev(tmp_path / "pki")
    monkeypatch.setenv("BENCH_PKI", str(pki.pai_cert.parent))
    db = tmp_path / "naive.db"
    with sqlite3.connect(db) as conn:
        conn.execute("CREATE TABLE assignments (uid TEXT, serial TEXT, pem TEXT)")
        conn.executemany(
            "INSERT INTO assignments VALUES (?, ?, ?)",
            [("A", "1", "x" * 700), ("B", "2", "y" * 702)],
        )
    dac = line_bench.mean_dac_pem_bytes(
        f"sqlite:///{db}", "SELECT avg(length(pem)) FROM assignments"
    )
    assert dac == 701.0
    # Every byte of the DAC travels once, at 10 bits per byte.
    assert line_bench.conversation_bytes(dac) - line_bench.conversation_bytes(0.0) == 701.0
    wire = line_bench.wire_figures(115200, dac, 0.2)
    bound = line_bench.conversation_bytes(dac) * 10 / 115200
    assert wire["wire_bound_s"] == round(bound, 5)
    assert wire["ratio"] == round(0.2 / bound, 4)
    assert 0.1 < bound < 0.3  # a DAC, the PAI and a CSR at 115200 baud
    assert line_bench.wire_figures(115200, dac, None)["ratio"] is None
