"""The benchmarks' latency probe: its samples, and the garbage collections it times."""

from __future__ import annotations

import gc
import json
from pathlib import Path

from linehost.line.latency import LatencyProbe, probe_from_env
from linehost.observers import DB_ASSIGN, DB_END_ATTEMPT
from tests.store.conftest import Factory


def test_the_probe_writes_its_samples_and_every_collection(tmp_path: Path) -> None:
    assert probe_from_env({}) is None
    probe = probe_from_env({"LINEHOST_LATENCY_FILE": str(tmp_path / "latency.json")})
    assert isinstance(probe, LatencyProbe)
    try:
        start = Factory().start()
        probe.key_taken_up(start, 0.0005)
        probe.dac_written(start, 0.004)
        probe.result_committed(start, 0.007)
        probe.issuer_answered(start, 0.001)
        probe.database_committed(start, DB_ASSIGN, 0.002)
        probe.database_committed(start, DB_END_ATTEMPT, 0.003)  # not a part of CSR -> DAC
        gc.collect()  # one full collection, timed
        probe.dump()
    finally:
        probe.stop_watching_collector()
    data = json.loads((tmp_path / "latency.json").read_text())
    assert data["csr_to_dac"] == [0.004]
    assert data["finish_to_commit"] == [0.007]
    assert data["csr_wait"] == [0.0005]
    assert data["issue"] == [0.001]
    assert data["assign_commit"] == [0.002]
    full = [seconds for generation, seconds in data["gc_pauses"] if generation == 2]
    assert len(full) >= 1
    assert all(0 <= s < 10 for s in full)
