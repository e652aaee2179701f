"""One line, three dialects (issue 17): a single `linehost run` drives plain v1 jigs, v1.1 jigs
that attest, and ECC608 letter jigs at once, against three `linehost sim` processes over ptys.

Every device ends with the outcome its spec prescribes; every confirmed DAC passes `openssl
verify`; every letter DAC carries the key its device generated; every attesting device's
signature is checked again with `openssl dgst` from the DAC and the recorded nonce; `audit
verify` exits 0.
"""

from __future__ import annotations

import hashlib
import subprocess
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from tests.e2e.harness import HostRun, SimRun, assert_no_traceback, jsonl, linehost
from tests.e2e.test_attestation import ATTEST_MIX, ATTESTING, _signature_verifies
from tests.e2e.test_letters_line import EXPECTED as LETTER_EXPECTED
from tests.e2e.test_letters_line import LETTER_PLAN, LETTERS

V1_JIGS, V1_DEVICES = 2, 2
ATTEST_JIGS, ATTEST_DEVICES = 5, 4  # with seed 11 the mix covers every attesting personality


@pytest.fixture(scope="module")
def dev_pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("pki") / "pki"
    linehost("pki", "init-dev", "--out", out)
    return out


def _config(path: Path, pki: Path, stations: dict[str, tuple[dict[str, str], str]]) -> Path:
    """One [[jigs]] table per port; `stations` maps a station to (its ports, its protocol)."""
    jigs = "".join(
        f'[[jigs]]\nname = "{station}-{name}"\nstation = "{station}"\nport = "{port}"\n'
        f'protocol = "{protocol}"\n'
        for station, (ports, protocol) in stations.items()
        for name, port in sorted(ports.items())
    )
    path.write_text(
        '[line]\nname = "mixed3"\nshutdown_grace = 5\n'
        f'[database]\nurl = "sqlite+aiosqlite:///{path.parent / "linehost.db"}"\n'
        f'[pki]\npai_cert = "{pki / "pai.pem"}"\npai_key = "{pki / "pai.key"}"\n'
        f'paa_cert = "{pki / "paa.pem"}"\nvid = "FFF1"\npid = "8000"\n'
        "allow_without_pop = true\n"
        "[protocol]\nsync_interval = 0.2\ncsr_timeout = 5\nresult_timeout = 8\n"
        'letter_gap = 0.1\nattest = "when_offered"\n' + jigs
    )
    return path


@pytest.mark.slow
@pytest.mark.timeout(360)
def test_one_line_of_v1_attesting_and_letter_jigs(tmp_path: Path, dev_pki: Path) -> None:
    paa = dev_pki / "paa.pem"
    plan = ";".join(",".join(jig) for jig in LETTER_PLAN)
    sims = {
        "v1": SimRun(tmp_path / "v1", jigs=V1_JIGS, devices=V1_DEVICES, mix="good", paa=paa),
        "att": SimRun(
            tmp_path / "att", jigs=ATTEST_JIGS, devices=ATTEST_DEVICES, mix=ATTEST_MIX,
            paa=paa, seed=11,
        ),
        "ecc": SimRun(
            tmp_path / "ecc", jigs=len(LETTER_PLAN), devices=None, mix="", paa=paa,
            extra=["--protocol", LETTERS, "--plan", plan],
        ),
    }  # fmt: skip
    for sim in sims.values():
        sim.start()
    config = _config(
        tmp_path / "line.toml",
        dev_pki,
        {
            "v1": (sims["v1"].ports, "v1"),
            "att": (sims["att"].ports, "v1"),
            "ecc": (sims["ecc"].ports, LETTERS),
        },
    )
    host = HostRun(config).start()
    try:
        for sim in sims.values():
            sim.wait(timeout=240)
    finally:
        for sim in sims.values():
            sim.stop()
        code = host.stop()
    log = host.output()
    assert code == 0, log[-3000:]
    assert_no_traceback(log)

    attempts = jsonl(linehost("audit", "--config", config, "attempts", "--format", "jsonl").stdout)
    assignments = jsonl(linehost("audit", "--config", config, "export", "--format", "jsonl").stdout)
    by_uid: dict[str, list[dict[str, Any]]] = defaultdict(list)
    per_jig: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for attempt in sorted(attempts, key=lambda a: a["started_at"]):
        by_uid[attempt["uid"]].append(attempt)
        per_jig[attempt["jig"]].append(attempt)
    dac_of = {a["dac_serial"]: a for a in assignments}
    assert len(dac_of) == len(assignments)  # never one DAC twice

    # plain v1 devices: provisioned, never challenged (they did not offer), key shown by a CSR
    for device in sims["v1"].devices_seen():
        [attempt] = by_uid[device["uid"]]
        assert attempt["outcome"] == "provisioned", attempt
        assert attempt["attest_nonce"] is None
        assert attempt["key_proof"] == "csr"

    # attesting devices: the verdict the attestation chapter prescribes, signatures re-checked
    attesting = sims["att"].devices_seen()
    assert {d["personality"] for d in attesting} == set(ATTESTING)
    for device in attesting:
        [attempt] = by_uid[device["uid"]]
        outcome, detail, code = ATTESTING[device["personality"]]
        assert (attempt["outcome"], attempt["device_code"]) == (outcome, code), attempt
        assert attempt["detail"].startswith(detail), attempt
        assert attempt["attest_nonce"] == device["attest_nonce"]
        assignment = dac_of[attempt["dac_serial"]]
        want_status = "confirmed" if device["personality"] == "attest" else "failed"
        assert assignment["status"] == want_status, (device["personality"], assignment["status"])
        if attempt["attest_signature"] is not None:
            nonce, signature = attempt["attest_nonce"], attempt["attest_signature"]
            verified = _signature_verifies(tmp_path, assignment["dac_pem"], nonce, signature)
            assert verified is (device["personality"] == "attest"), attempt

    # letter devices: the outcomes of the letter spec, jig by jig, key_proof none
    letter_devices = sims["ecc"].devices_seen()
    assert len(letter_devices) == sum(len(jig) for jig in LETTER_PLAN)
    for index, jig_plan in enumerate(LETTER_PLAN, start=1):
        tried = per_jig[f"ecc-j{index}"]
        got = [(a["outcome"], a["detail"]) for a in tried]
        want = [LETTER_EXPECTED[name] for name in jig_plan]
        assert [g[0] for g in got] == [w[0] for w in want], (index, got)
        for (_, detail), (_, wanted) in zip(got, want, strict=True):
            if wanted is not None:
                assert detail == wanted, (index, got)
        assert {a["key_proof"] for a in tried} == {"none"}
        assert {a["attest_nonce"] for a in tried} == {None}  # letters never attest
    keys = {d["uid"]: d["public_key_sha256"] for d in letter_devices}
    for a in assignments:
        if a["station"] != "ecc":
            continue
        dac = x509.load_pem_x509_certificate(a["dac_pem"].encode())
        spki = dac.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        assert hashlib.sha256(spki).hexdigest() == keys[a["uid"]], a["uid"]

    # every confirmed DAC of the three dialects passes an independent verifier
    confirmed = [a for a in assignments if a["status"] == "confirmed"]
    assert {a["station"] for a in confirmed} == {"v1", "att", "ecc"}
    files = []
    for a in confirmed:
        path = tmp_path / f"dac-{a['dac_serial']}.pem"
        path.write_text(a["dac_pem"])
        files.append(str(path))
    verified = subprocess.run(
        ["openssl", "verify", "-CAfile", str(paa), "-untrusted", str(dev_pki / "pai.pem"), *files],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert verified.stdout.count(": OK") == len(files)

    result = linehost("audit", "--config", config, "verify", check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "audit verify: OK" in result.stdout
