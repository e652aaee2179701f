"""Re-delivery: a device that never answered comes back (same UID, same key) and gets the SAME DAC.

Both ways the spec names: after a result timeout, and after the host was killed mid-attempt.
"""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.harness import HostRun, SimRun, jsonl, linehost, wait_for, write_config

#: Longer than the host's empty_after_syncs (3) unanswered Init rounds at sync_interval 0.2 s.
RESEAT = "1.5"


@pytest.fixture(scope="module")
def dev_pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("pki") / "pki"
    linehost("pki", "init-dev", "--out", out)
    return out


def _records(config: Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    assignments = jsonl(linehost("audit", "--config", config, "export", "--format", "jsonl").stdout)
    attempts = jsonl(linehost("audit", "--config", config, "attempts", "--format", "jsonl").stdout)
    return assignments, sorted(attempts, key=lambda a: a["started_at"])


def _reseated_device(sim: SimRun) -> dict[str, Any]:
    devices = sim.devices_seen()
    assert len(devices) == 1
    device = devices[0]
    assert device["personality"] == "reseated_after_silence"
    assert device["reseats"] == 1
    assert device["finish_codes"] == [0]
    assert device["stored_dac_serial"]
    return device


@pytest.mark.timeout(90)
def test_result_timeout_then_reseat_gets_the_same_dac(tmp_path: Path, dev_pki: Path) -> None:
    sim = SimRun(
        tmp_path,
        jigs=1,
        devices=1,
        mix="reseated_after_silence",
        paa=dev_pki / "paa.pem",
        linger=1.0,
        extra=["--reseat-seconds", RESEAT],
    ).start()
    config = write_config(
        tmp_path / "line.toml",
        pki=dev_pki,
        ports=sim.ports,
        protocol="sync_interval = 0.2\ncsr_timeout = 5\nresult_timeout = 1\n",
    )
    host = HostRun(config).start()
    try:
        sim.wait(timeout=60)
    finally:
        sim.stop()
        code = host.stop()
    assert code == 0, host.output()[-3000:]
    log = host.output()
    assert "Traceback" not in log
    assert "dac_issued" in log
    assert "dac_redelivered" in log

    device = _reseated_device(sim)
    uid, serial = device["uid"], device["stored_dac_serial"]
    assignments, attempts = _records(config)
    mine = [a for a in attempts if a["uid"] == uid]
    assert [(a["outcome"], a["detail"]) for a in mine] == [
        ("timeout", "result"),
        ("provisioned", "finish:000 provisioning done"),
    ], mine
    # The second attempt got the DAC of the first: re-delivered, not issued anew.
    assert mine[0]["dac_serial"] == mine[1]["dac_serial"] == serial
    assert [(a["uid"], a["status"], a["dac_serial"]) for a in assignments] == [
        (uid, "confirmed", serial)
    ]
    history = linehost("audit", "--config", config, "dac", serial).stdout
    events = [ln.split()[-1] for ln in history.split("audit events")[1].splitlines() if ln.strip()]
    assignment_events = [e for e in events if e.startswith("assignment_")]
    assert assignment_events == [
        "assignment_issued",
        "assignment_unknown",  # the result timeout left it unknown
        "assignment_redelivered",
        "assignment_confirmed",
    ], history
    assert linehost("audit", "--config", config, "verify").returncode == 0


@pytest.mark.timeout(120)
def test_host_killed_after_delivery_then_reseat_gets_the_same_dac(
    tmp_path: Path, dev_pki: Path
) -> None:
    sim = SimRun(
        tmp_path,
        jigs=1,
        devices=1,
        mix="reseated_after_silence",
        paa=dev_pki / "paa.pem",
        linger=1.0,
        extra=["--reseat-seconds", RESEAT],
    ).start()
    db = tmp_path / "linehost.db"
    # A long result timeout: the first host is killed long before it could give up.
    config = write_config(
        tmp_path / "line.toml",
        pki=dev_pki,
        ports=sim.ports,
        database_url=f"sqlite+aiosqlite:///{db}",
        protocol="sync_interval = 0.2\ncsr_timeout = 5\nresult_timeout = 60\n",
    )

    def issued() -> bool:
        if not db.exists():
            return False
        try:
            with sqlite3.connect(db) as conn:
                row = conn.execute("SELECT status FROM assignments").fetchone()
        except sqlite3.OperationalError:  # schema not there yet
            return False
        return row is not None and row[0] == "issued"

    first = HostRun(config).start()
    second: HostRun | None = None
    try:
        wait_for(issued, 30, "the DAC to be issued")
        wait_for(lambda: "dac_issued" in first.output(), 10, "dac_issued in the log")
        time.sleep(0.3)  # the DAC is on the wire; the device stays silent
        first.kill()  # SIGKILL: no shutdown, the attempt stays open in the database
        assert first.proc is not None
        assert first.proc.returncode == -9
        first_log = first.output()
        second = HostRun(tmp_path / "line.toml").start()
        try:
            sim.wait(timeout=60)
        except AssertionError as exc:
            raise AssertionError(
                f"{exc}\nfirst host:\n{first_log[-3000:]}\nsecond host:\n{second.output()[-3000:]}"
            ) from None
    finally:
        sim.stop()
        first.kill()
        code = second.stop() if second is not None else None
    assert second is not None
    assert code == 0, second.output()[-3000:]
    log = second.output()
    assert "interrupted_attempts_recorded" in log
    assert "dac_redelivered" in log
    assert "Traceback" not in log

    device = _reseated_device(sim)
    uid, serial = device["uid"], device["stored_dac_serial"]
    assignments, attempts = _records(config)
    mine = [a for a in attempts if a["uid"] == uid]
    assert [(a["outcome"], a["detail"]) for a in mine] == [
        ("disconnected", "host stopped during attempt"),
        ("provisioned", "finish:000 provisioning done"),
    ], mine
    assert mine[0]["dac_serial"] == mine[1]["dac_serial"] == serial
    assert [(a["uid"], a["status"], a["dac_serial"]) for a in assignments] == [
        (uid, "confirmed", serial)
    ]
    history = linehost("audit", "--config", config, "dac", serial).stdout
    assert "assignment_unknown" in history  # startup recovery
    assert "assignment_redelivered" in history
    assert linehost("audit", "--config", config, "verify").returncode == 0
