"""PostgreSQL connections cut again and again while `linehost run` provisions 8 simulated jigs:
jigs wait for the database (`database_unavailable` ... `database_back`), never hand out a DAC
that is not committed, resume by themselves, and nothing is lost or recorded twice."""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path

import pytest

from tests.e2e.harness import HostRun, SimRun, jsonl, linehost, wait_for, write_config
from tests.e2e.pg import BackendKiller, postgres_database, query

pytestmark = [pytest.mark.postgres, pytest.mark.slow]

JIGS = 8
DEVICES = 8  # per jig
OUTAGE = 4.0  # seconds of refused connections and pg_terminate_backend in a loop


@pytest.fixture(scope="module")
def dev_pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("pki") / "pki"
    linehost("pki", "init-dev", "--out", out)
    return out


def finished(sim: SimRun) -> int:
    """Devices the simulator has recorded as done (complete lines of its record)."""
    return sim.record.read_text().count("\n") if sim.record.exists() else 0


def assignments(url: str) -> int:
    return int(query(url, "SELECT count(*) AS n FROM assignments")[0]["n"])


@pytest.mark.timeout(240)
def test_jigs_wait_out_a_database_outage_and_lose_nothing(tmp_path: Path, dev_pki: Path) -> None:
    with postgres_database() as url:
        sim = SimRun(tmp_path, jigs=JIGS, devices=DEVICES, mix="good", paa=dev_pki / "paa.pem")
        sim.start()
        config = write_config(
            tmp_path / "line.toml",
            pki=dev_pki,
            ports=sim.ports,
            database_url=url,
            protocol="sync_interval = 0.2\ncsr_timeout = 10\nresult_timeout = 5\n",
        )
        host = HostRun(config)
        try:
            linehost("db", "upgrade", "--config", config)
            host.start()
            wait_for(lambda: assignments(url) >= JIGS, 60, "the first devices")
            killer = BackendKiller(url, OUTAGE, refuse=True)
            killer.start()
            killer.join(OUTAGE + 30)
            after_outage = assignments(url)
            wait_for(lambda: finished(sim) >= JIGS * DEVICES, 150, "every device")
        finally:
            # The host first: a port vanishing under a host is another test's subject.
            code = host.stop() if host.proc is not None else None
            sim.stop()
        log = host.output()
        assert code == 0, log[-3000:]
        assert "Traceback" not in log, log[-3000:]
        assert killer.killed > 0
        # the outage was seen by jigs, and they came back by themselves
        assert log.count("database_unavailable") >= 2, log[-3000:]
        assert log.count("database_back") >= 1
        assert assignments(url) > after_outage, "no device was provisioned after the outage"

        devices = sim.devices_seen()
        assert len(devices) == JIGS * DEVICES
        records = jsonl(linehost("audit", "--config", config, "export", "--format", "jsonl").stdout)
        attempts = jsonl(
            linehost("audit", "--config", config, "attempts", "--format", "jsonl").stdout
        )
        # nothing recorded twice
        for field in ("uid", "dac_serial", "dac_sha256"):
            assert [v for v, n in Counter(r[field] for r in records).items() if n > 1] == []
        assert len({a["attempt_id"] for a in attempts}) == len(attempts)
        assert all(a["ended_at"] is not None for a in attempts)
        # nothing lost: every device has its attempt(s), and each DAC a device holds is the
        # one committed and confirmed for it (delivery only after the commit)
        by_uid = {r["uid"]: r for r in records}
        tried = Counter(a["uid"] for a in attempts)
        assert {d["uid"] for d in devices} == set(tried)
        stored = {d["uid"]: d for d in devices if d["stored_dac_serial"] is not None}
        for uid, device in stored.items():
            assert by_uid[uid]["status"] == "confirmed", by_uid[uid]
            assert by_uid[uid]["dac_serial"] == device["stored_dac_serial"]
            assert by_uid[uid]["dac_sha256"] == device["stored_dac_sha256"]
        # and the database confirms no DAC that a device does not hold
        confirmed = {r["uid"] for r in records if r["status"] == "confirmed"}
        assert confirmed == set(stored)
        provisioned = {a["uid"] for a in attempts if a["outcome"] == "provisioned"}
        assert provisioned == set(stored)
        # jigs paused rather than failing their devices: nearly all were provisioned
        assert len(stored) >= len(devices) - JIGS, Counter(a["outcome"] for a in attempts)

        started = time.monotonic()
        verify = linehost("audit", "--config", config, "verify", check=False)
        assert verify.returncode == 0, verify.stdout[-3000:]
        assert time.monotonic() - started < 60
