"""The attestation extension (jig protocol v1.1) end to end: `linehost run` against simulated v1
jigs and v1.1 attesting jigs (every attesting personality), as separate processes over ptys.

Every device ends with the outcome the spec prescribes; every confirmed DAC passes
`openssl verify`; every attesting device's signature is checked again here with the openssl CLI
from the DAC and the nonce recorded for its attempt (read back with `linehost audit attempts`);
failed attestations are revocation candidates; `audit verify` exits 0; and with `attest =
"require"` the database holds no confirmed assignment without a verified attestation.
"""

from __future__ import annotations

import base64
import hashlib
import re
import socket
import sqlite3
import subprocess
import urllib.request
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.harness import HostRun, SimRun, assert_no_traceback, jsonl, linehost, write_config

V1_JIGS, V1_DEVICES = 2, 3
ATTEST_JIGS, ATTEST_DEVICES = 5, 4
ATTEST_MIX = "attest:2,attest_wrong_key,attest_wrong_dac,attest_silent,attest_error"
#: The first attempt of each attesting personality, under when_offered and require alike:
#: (outcome, detail prefix, device_code).
ATTESTING: dict[str, tuple[str, str, int | None]] = {
    "attest": ("provisioned", "finish:000 provisioning done; attestation verified", 0),
    "attest_wrong_key": ("attestation_failed", "bad signature", 0),
    "attest_wrong_dac": ("attestation_failed", "bad signature", 0),
    "attest_silent": ("attestation_failed", "no answer to Attest (timeout)", None),
    "attest_error": ("attestation_failed", "finish:001 data not found (answer to Attest)", 1),
}
#: A v1 device (no offer) under each mode.
V1 = {
    "when_offered": ("provisioned", "finish:000 provisioning done", 0),
    "require": ("protocol_error", "attestation not offered", None),
}


@pytest.fixture(scope="module")
def dev_pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("pki") / "pki"
    linehost("pki", "init-dev", "--out", out)
    return out


def _openssl(*args: str | Path, data: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        ["openssl", *map(str, args)], input=data, capture_output=True, check=False, timeout=30
    )


def _signature_verifies(tmp: Path, dac_pem: str, nonce_hex: str, signature_b64: str) -> bool:
    """openssl dgst -sha256 -verify <DAC public key> -signature <sig> <N || SHA-256(DAC DER)>."""
    name = hashlib.sha256(signature_b64.encode()).hexdigest()[:16]
    dac = tmp / f"{name}.dac.pem"
    dac.write_text(dac_pem)
    pub = _openssl("x509", "-in", dac, "-pubkey", "-noout")
    assert pub.returncode == 0, pub.stderr
    (tmp / f"{name}.pub.pem").write_bytes(pub.stdout)
    der = _openssl("x509", "-in", dac, "-outform", "DER")
    assert der.returncode == 0, der.stderr
    (tmp / f"{name}.data").write_bytes(
        bytes.fromhex(nonce_hex) + hashlib.sha256(der.stdout).digest()
    )
    (tmp / f"{name}.sig").write_bytes(base64.b64decode(signature_b64))
    proc = _openssl(
        "dgst", "-sha256", "-verify", tmp / f"{name}.pub.pem",
        "-signature", tmp / f"{name}.sig", tmp / f"{name}.data",
    )  # fmt: skip
    return proc.returncode == 0 and b"Verified OK" in proc.stdout


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _run_line(tmp: Path, dev_pki: Path, mode: str) -> tuple[Path, list[dict[str, Any]], str]:
    """v1 jigs j1.. and attesting jigs after them, one host; returns the config, the devices and
    the host's Prometheus metrics scraped once every device is done."""
    v1 = SimRun(tmp / "v1", jigs=V1_JIGS, devices=V1_DEVICES, mix="good", paa=dev_pki / "paa.pem")
    v11 = SimRun(
        tmp / "v11", jigs=ATTEST_JIGS, devices=ATTEST_DEVICES, mix=ATTEST_MIX,
        paa=dev_pki / "paa.pem", seed=11,
    )  # fmt: skip
    v1.start()
    v11.start()
    ports = dict(v1.ports)
    ports |= {f"j{V1_JIGS + int(name[1:])}": path for name, path in v11.ports.items()}
    metrics_port = _free_port()
    config = write_config(
        tmp / "line.toml",
        pki=dev_pki,
        ports=ports,
        protocol=f'sync_interval = 0.2\ncsr_timeout = 5\nresult_timeout = 3\nattest = "{mode}"\n',
        extra=f'[metrics]\nlisten = "127.0.0.1:{metrics_port}"\n',
    )
    host = HostRun(config).start()
    try:
        v1.wait(timeout=120)
        v11.wait(timeout=120)
        url = f"http://127.0.0.1:{metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=10) as response:
            metrics = response.read().decode()
    finally:
        v1.stop()
        v11.stop()
        code = host.stop()
    assert code == 0, host.output()[-3000:]
    log = host.output()
    assert_no_traceback(log)
    devices = v1.devices_seen() + v11.devices_seen()
    assert len(devices) == V1_JIGS * V1_DEVICES + ATTEST_JIGS * ATTEST_DEVICES
    assert {d["personality"] for d in devices} == {"good", *ATTESTING}
    return config, devices, metrics


@pytest.mark.slow
@pytest.mark.timeout(300)
@pytest.mark.parametrize("mode", ["when_offered", "require"])
def test_a_line_of_v1_and_attesting_jigs(tmp_path: Path, dev_pki: Path, mode: str) -> None:
    config, devices, metrics = _run_line(tmp_path, dev_pki, mode)
    assignments = jsonl(linehost("audit", "--config", config, "export", "--format", "jsonl").stdout)
    attempts = jsonl(linehost("audit", "--config", config, "attempts", "--format", "jsonl").stdout)
    by_uid: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for attempt in attempts:
        by_uid[attempt["uid"]].append(attempt)
    dac_of = {a["dac_serial"]: a for a in assignments}

    failed_serials: set[str] = set()
    for device in devices:
        uid, personality = device["uid"], device["personality"]
        tried = sorted(by_uid[uid], key=lambda a: a["started_at"])
        assert len(tried) == 1, (personality, tried)  # then waiting_for_swap, never again
        [attempt] = tried
        if personality == "good":
            outcome, detail, code = V1[mode]
        else:
            outcome, detail, code = ATTESTING[personality]
        assert (attempt["outcome"], attempt["device_code"]) == (outcome, code), (
            personality,
            attempt,
        )
        assert attempt["detail"].startswith(detail), (personality, attempt)
        if personality == "good":
            assert attempt["attest_nonce"] is None  # never challenged
            assert attempt["attest_signature"] is None
            assert device["attest_nonce"] is None
            if mode == "require":
                assert attempt["dac_serial"] is None  # refused before its CSR was accepted
                assert device["stored_dac_serial"] is None
            continue
        # challenged: the nonce the device received is the one recorded for its attempt
        assert attempt["attest_nonce"] == device["attest_nonce"], (personality, attempt)
        assert len(attempt["attest_nonce"]) == 64
        assignment = dac_of[attempt["dac_serial"]]
        assert assignment["dac_serial"] == device["stored_dac_serial"]
        if personality == "attest":
            assert assignment["status"] == "confirmed"
        else:
            assert assignment["status"] == "failed"
            failed_serials.add(assignment["dac_serial"])
        if personality in ("attest_silent", "attest_error"):
            assert attempt["attest_signature"] is None
            continue
        # the signature, re-checked with the openssl CLI from the DAC and the recorded nonce
        verified = _signature_verifies(
            tmp_path, assignment["dac_pem"], attempt["attest_nonce"], attempt["attest_signature"]
        )
        assert verified is (personality == "attest"), (personality, attempt)

    # every nonce is new
    nonces = [a["attest_nonce"] for a in attempts if a["attest_nonce"] is not None]
    assert len(nonces) == len(set(nonces)) == ATTEST_JIGS * ATTEST_DEVICES

    # every confirmed DAC chains to the PAA
    confirmed = [a for a in assignments if a["status"] == "confirmed"]
    expected_confirmed = sum(
        1
        for d in devices
        if d["personality"] == "attest" or (d["personality"] == "good" and mode == "when_offered")
    )
    assert len(confirmed) == expected_confirmed
    files = []
    for a in confirmed:
        path = tmp_path / f"confirmed-{a['dac_serial']}.pem"
        path.write_text(a["dac_pem"])
        files.append(path)
    verified = _openssl(
        "verify", "-CAfile", dev_pki / "paa.pem", "-untrusted", dev_pki / "pai.pem", *files
    )
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert verified.stdout.count(b": OK") == len(files)

    # a failed attestation lists its DAC as a revocation candidate
    listed = linehost("pki", "revoke", "--config", config, "--candidates").stdout
    for serial in failed_serials:
        assert f"CANDIDATE {serial} " in listed, listed
    assert "ended attestation_failed" in listed or "assignment failed" in listed

    # the Prometheus counter by outcome counts them too
    counted = sum(
        float(n)
        for n in re.findall(
            r'linehost_attempts_total\{[^}]*outcome="attestation_failed"[^}]*\} (\S+)', metrics
        )
    )
    assert counted == sum(1 for a in attempts if a["outcome"] == "attestation_failed") > 0

    result = linehost("audit", "--config", config, "verify")
    assert "audit verify: OK" in result.stdout

    if mode == "require":
        _no_confirmed_assignment_without_a_verified_attestation(config, tmp_path)


def _no_confirmed_assignment_without_a_verified_attestation(config: Path, tmp: Path) -> None:
    """Straight from the database: each confirmed assignment was confirmed by an attempt whose
    recorded attestation verifies against that very DAC."""
    db = sqlite3.connect(config.parent / "linehost.db")
    try:
        rows = db.execute(
            "SELECT a.dac_serial, a.dac_pem, t.outcome, t.attest_nonce, t.attest_signature "
            "FROM assignments a LEFT JOIN attempts t "
            "ON t.assignment_id = a.id AND t.outcome = 'provisioned' "
            "WHERE a.status = 'confirmed'"
        ).fetchall()
        unattested = db.execute(
            "SELECT count(*) FROM attempts "
            "WHERE outcome = 'provisioned' AND attest_signature IS NULL"
        ).fetchone()[0]
    finally:
        db.close()
    assert rows
    for serial, dac_pem, outcome, nonce, signature in rows:
        assert outcome == "provisioned", serial
        assert nonce is not None, serial
        assert signature is not None, serial
        assert _signature_verifies(tmp, dac_pem, nonce, signature), serial
    assert unattested == 0
