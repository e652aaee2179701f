"""`linehost run` as a subprocess against the simulator: every personality, many jigs."""

from __future__ import annotations

import subprocess
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import pytest

from linehost.sim.personalities import personality_names
from tests.e2e.harness import HostRun, SimRun, assert_no_traceback, jsonl, linehost, write_config

#: What the spec prescribes for a device of each personality (its first attempt).
PROVISIONED = {"good", "crlf", "noisy", "slow", "late_sync", "stays", "garbage", "lower_uid",
               "abort_ffff"}  # fmt: skip
#: Attesting (v1.1) devices under the default `attest = "off"`: never challenged, provisioned
#: like v1 (their outcomes when challenged: tests/e2e/test_attestation.py).
ATTESTING = {"attest", "attest_wrong_key", "attest_wrong_dac", "attest_silent", "attest_error"}
DEVICE_ERRORS = {
    "finish_001": 0x001,
    "finish_002": 0x002,
    "finish_003": 0x003,
    "finish_004": 0x004,
    "finish_FFFE": 0xFFFE,
    "finish_FFFF": 0xFFFF,
    "finish_unknown": 0x0ABC,
}
EXPECTED_OUTCOME = {
    **dict.fromkeys(PROVISIONED | ATTESTING, "provisioned"),
    **dict.fromkeys(DEVICE_ERRORS, "device_error"),
    "bad_csr_signature": "csr_rejected",
    "p384": "csr_rejected",
    "silent_after_delivery": "timeout",
    "reseated_after_silence": "timeout",
    "flood": "protocol_error",  # its CSR block never closes
    "finish_junk": "protocol_error",  # then re-delivered: tests/e2e/test_redelivery.py
    "unplug": "disconnected",
    "cloned_key": "duplicate_key",
}


@pytest.fixture(scope="module")
def dev_pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("pki") / "pki"
    linehost("pki", "init-dev", "--out", out)
    return out


def test_every_personality_covered() -> None:
    assert set(personality_names()) == set(EXPECTED_OUTCOME)


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_line_of_ten_jigs_with_every_personality(tmp_path: Path, dev_pki: Path) -> None:
    names = sorted(EXPECTED_OUTCOME)
    # good devices weigh more so cloned_key devices find a provisioned key to clone
    mix = ",".join(f"{n}:4" if n == "good" else n for n in names)
    sim = SimRun(
        tmp_path,
        jigs=10,
        devices=4,
        mix=mix,
        paa=dev_pki / "paa.pem",
        extra=["--reseat-seconds", "1.5"],
    ).start()
    config = write_config(tmp_path / "line.toml", pki=dev_pki, ports=sim.ports)
    host = HostRun(config).start()
    try:
        sim.wait(timeout=180)
    finally:
        sim.stop()
        code = host.stop()
    assert code == 0, host.output()[-3000:]
    log = host.output()
    assert "line_stopped" in log
    assert_no_traceback(log)

    devices = sim.devices_seen()
    assert len(devices) == 40
    assert {d["personality"] for d in devices} == set(EXPECTED_OUTCOME)
    assignments = jsonl(linehost("audit", "--config", config, "export", "--format", "jsonl").stdout)
    attempts = jsonl(linehost("audit", "--config", config, "attempts", "--format", "jsonl").stdout)
    by_uid: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for attempt in attempts:
        by_uid[attempt["uid"]].append(attempt)

    for device in devices:
        uid, personality = device["uid"], device["personality"]
        tried = sorted(by_uid[uid], key=lambda a: a["started_at"])
        assert tried, f"{personality} device {uid}: no attempt recorded"
        expected = EXPECTED_OUTCOME[personality]
        if personality == "cloned_key" and device["cloned_from"] is None:
            expected = "provisioned"  # nothing provisioned yet to clone from
        first = tried[0]
        assert first["outcome"] == expected, (personality, tried)
        if personality in DEVICE_ERRORS:
            assert first["device_code"] == DEVICE_ERRORS[personality]
        if personality == "stays":
            # the device lingering in the jig is waiting_for_swap, not a new attempt
            assert len(tried) == 1, tried
        for attempt in tried:
            assert attempt["line"] == "e2e-line"
            assert attempt["ended_at"] is not None

    # exactly one confirmed assignment per provisioned device, with the DAC it stored
    confirmed = [a for a in assignments if a["status"] == "confirmed"]
    stored = {d["uid"]: d for d in devices if d["stored_dac_serial"]}
    assert len(stored) >= 18
    per_uid = Counter(a["uid"] for a in confirmed)
    assert set(per_uid) == set(stored)
    assert all(count == 1 for count in per_uid.values())
    for a in confirmed:
        assert a["dac_serial"] == stored[a["uid"]]["stored_dac_serial"]
        assert a["dac_sha256"] == stored[a["uid"]]["stored_dac_sha256"]
    # device errors leave failed assignments; silence leaves unknown ones
    statuses = Counter(a["status"] for a in assignments)
    assert statuses["failed"] >= len(DEVICE_ERRORS)
    assert statuses["unknown"] >= 1
    # never one DAC, serial or key twice
    assert len({a["dac_serial"] for a in assignments}) == len(assignments)
    assert len({a["dac_sha256"] for a in assignments}) == len(assignments)

    # an independent verifier accepts every confirmed DAC against the PAA and PAI
    dac_files = []
    for a in confirmed:
        path = tmp_path / f"dac-{a['dac_serial']}.pem"
        path.write_text(a["dac_pem"])
        dac_files.append(str(path))
    verified = subprocess.run(
        ["openssl", "verify", "-CAfile", str(dev_pki / "paa.pem"),
         "-untrusted", str(dev_pki / "pai.pem"), *dac_files],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert verified.stdout.count(": OK") == len(dac_files)

    result = linehost("audit", "--config", config, "verify")
    assert "audit verify: OK" in result.stdout
    history = linehost("audit", "--config", config, "uid", confirmed[0]["uid"]).stdout
    assert confirmed[0]["dac_serial"] in history
    assert "provisioned" in history
    dac = linehost("audit", "--config", config, "dac", confirmed[0]["dac_sha256"]).stdout
    assert confirmed[0]["uid"] in dac
    assert "assignment_confirmed" in dac


def test_bad_config_is_one_line_per_problem_and_nonzero(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('[line]\nname = "x"\nbogus = 1\n')  # two problems: bogus, no [pki]
    proc = linehost("run", "--config", bad, check=False)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert lines == [
        f"linehost: error: {bad}: line.bogus: unknown key",
        f"linehost: error: {bad}: pki: required key is missing",
    ], proc.stderr
    pki = 'vid = "FFF1"\npid = "8000"\npai_cert = "pai.pem"\npai_key = "pai.key"\n'
    bad.write_text(f'[line]\nname = "x"\nbogus = 1\n\n[pki]\n{pki}')  # one problem
    proc = linehost("run", "--config", bad, check=False)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0, proc.stderr
    assert "line.bogus: unknown key" in proc.stderr
    assert "Traceback" not in proc.stderr
    missing = linehost("audit", "--config", tmp_path / "nope.toml", "verify", check=False)
    assert missing.returncode == 2
    assert "no such file" in missing.stderr


def test_unreadable_pai_is_refused_at_start(tmp_path: Path, dev_pki: Path) -> None:
    broken = tmp_path / "pki"
    broken.mkdir()
    for name in ("paa.pem", "pai.key"):
        (broken / name).write_bytes((dev_pki / name).read_bytes())
    (broken / "pai.pem").write_text("not a certificate\n")
    config = write_config(tmp_path / "line.toml", pki=broken, ports={"j1": "/nonexistent"})
    proc = linehost("run", "--config", config, check=False, timeout=30)
    assert proc.returncode == 2
    assert "pai" in proc.stderr.lower()
    assert "Traceback" not in proc.stderr
