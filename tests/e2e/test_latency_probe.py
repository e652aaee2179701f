"""`linehost run` with LINEHOST_LATENCY_FILE, as benchmarks/line.py runs it: the latency probe
is one more observer of the line, and its samples are on disk after a clean stop."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from linehost.line.latency import ENV_VAR
from tests.e2e.harness import HostRun, SimRun, linehost, write_config


@pytest.fixture(scope="module")
def dev_pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("pki") / "pki"
    linehost("pki", "init-dev", "--out", out)
    return out


@pytest.mark.timeout(120)
def test_the_latency_file_holds_one_sample_per_device(tmp_path: Path, dev_pki: Path) -> None:
    sim = SimRun(tmp_path, jigs=2, devices=3, mix="good", paa=dev_pki / "paa.pem").start()
    config = write_config(tmp_path / "line.toml", pki=dev_pki, ports=sim.ports)
    latency = tmp_path / "latency.json"
    host = HostRun(config, env={ENV_VAR: str(latency)}).start()
    try:
        sim.wait(timeout=60)
    finally:
        sim.stop()
        code = host.stop()
    assert code == 0, host.output()[-3000:]
    samples = json.loads(latency.read_text())
    assert len(samples["csr_to_dac"]) == 6  # every DAC written, on both jigs
    assert len(samples["finish_to_commit"]) == 6  # every finish:000 committed
    assert all(0 <= s < 5 for s in samples["csr_to_dac"] + samples["finish_to_commit"])
