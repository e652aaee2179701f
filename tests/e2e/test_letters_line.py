"""A mixed line: `linehost run` with v1 jigs and ECC608 letter jigs at once, against two
`linehost sim` processes over real ptys (issue 17)."""

from __future__ import annotations

import hashlib
import subprocess
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from linehost.sim.personalities import personality_names
from tests.e2e.harness import HostRun, SimRun, assert_no_traceback, jsonl, linehost

LETTERS = "ecc608-letters"
#: One list of devices per letter jig, in order; the first devices give the later ones
#: provisioned keys to clone (cloned_key) and locked chips to bring back (locked).
LETTER_PLAN = [
    ["good", "cloned_key"],
    ["noisy", "readback_corrupt"],
    ["slow_chunks", "unplug"],
    ["silent_after_q", "good"],
    ["good", "good", "locked"],
    ["good", "noisy"],
    ["slow_chunks", "good"],
    ["good", "silent_after_q"],
]
#: What the letter protocol spec prescribes for each personality: (outcome, detail).
EXPECTED = {
    "good": ("provisioned", "readback ok"),
    "noisy": ("provisioned", "readback ok"),
    "slow_chunks": ("provisioned", "readback ok"),
    "silent_after_q": ("provisioned", "readback ok"),
    "locked": ("provisioned", "readback ok"),  # the DAC of its earlier life, delivered again
    "readback_corrupt": ("device_error", "readback mismatch"),
    "cloned_key": ("duplicate_key", None),
    "unplug": ("disconnected", None),
}
V1_JIGS = 4


@pytest.fixture(scope="module")
def dev_pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("pki") / "pki"
    linehost("pki", "init-dev", "--out", out)
    return out


def mixed_config(
    path: Path, pki: Path, v1: dict[str, str], letters: dict[str, str], *, pop: bool
) -> Path:
    """v1 jigs v1-j1.. on station st-v1, letter jigs ecc-j1.. on station st-ecc."""
    jigs = "".join(
        f'[[jigs]]\nname = "v1-{name}"\nstation = "st-v1"\nport = "{port}"\n'
        for name, port in sorted(v1.items())
    ) + "".join(
        f'[[jigs]]\nname = "ecc-{name}"\nstation = "st-ecc"\nport = "{port}"\n'
        f'protocol = "{LETTERS}"\n'
        for name, port in sorted(letters.items())
    )
    path.write_text(
        '[line]\nname = "mixed"\nshutdown_grace = 5\n'
        f'[database]\nurl = "sqlite+aiosqlite:///{path.parent / "linehost.db"}"\n'
        f'[pki]\npai_cert = "{pki / "pai.pem"}"\npai_key = "{pki / "pai.key"}"\n'
        f'paa_cert = "{pki / "paa.pem"}"\nvid = "FFF1"\npid = "8000"\n'
        + ("allow_without_pop = true\n" if pop else "")
        + "[protocol]\nsync_interval = 0.2\ncsr_timeout = 5\nresult_timeout = 8\n"
        "letter_gap = 0.1\n" + jigs
    )
    return path


def test_plan_covers_every_letter_personality() -> None:
    assert {name for plan in LETTER_PLAN for name in plan} == set(personality_names(LETTERS))
    assert set(EXPECTED) == set(personality_names(LETTERS))


def test_letter_line_refuses_to_start_without_allow_without_pop(
    tmp_path: Path, dev_pki: Path
) -> None:
    config = mixed_config(
        tmp_path / "line.toml", dev_pki, {"j1": "/nonexistent/v1"}, {"j1": "/nonexistent/e"},
        pop=False,
    )  # fmt: skip
    proc = linehost("run", "--config", config, check=False, timeout=30)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert "allow_without_pop" in lines[0]
    assert "ecc-j1" in lines[0]
    assert not (tmp_path / "linehost.db").exists()  # refused before anything was opened


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_mixed_line_of_v1_and_letter_jigs(tmp_path: Path, dev_pki: Path) -> None:
    plan = ";".join(",".join(jig) for jig in LETTER_PLAN)
    letters_sim = SimRun(
        tmp_path / "ecc", jigs=len(LETTER_PLAN), devices=None, mix="", paa=dev_pki / "paa.pem",
        extra=["--protocol", LETTERS, "--plan", plan],
    ).start()  # fmt: skip
    v1_sim = SimRun(
        tmp_path / "v1", jigs=V1_JIGS, devices=3, mix="good:3,noisy,crlf", paa=dev_pki / "paa.pem"
    ).start()
    config = mixed_config(
        tmp_path / "line.toml", dev_pki, v1_sim.ports, letters_sim.ports, pop=True
    )
    host = HostRun(config).start()
    try:
        letters_sim.wait(timeout=200)
        v1_sim.wait(timeout=60)
    finally:
        letters_sim.stop()
        v1_sim.stop()
        code = host.stop()
    log = host.output()
    assert code == 0, log[-3000:]
    assert_no_traceback(log)

    attempts = jsonl(linehost("audit", "--config", config, "attempts", "--format", "jsonl").stdout)
    assignments = jsonl(linehost("audit", "--config", config, "export", "--format", "jsonl").stdout)
    devices = letters_sim.devices_seen()
    assert len(devices) == sum(len(jig) for jig in LETTER_PLAN)
    assert {d["protocol"] for d in devices} == {LETTERS}

    # Every letter device ends with the outcome the spec prescribes, jig by jig, in order.
    per_jig: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for attempt in sorted(attempts, key=lambda a: a["started_at"]):
        per_jig[attempt["jig"]].append(attempt)
    for index, jig_plan in enumerate(LETTER_PLAN, start=1):
        tried = per_jig[f"ecc-j{index}"]
        got = [(a["outcome"], a["detail"]) for a in tried]
        want = [EXPECTED[name] for name in jig_plan]
        assert [g[0] for g in got] == [w[0] for w in want], (index, got)
        for (_, detail), (_, wanted) in zip(got, want, strict=True):
            if wanted is not None:
                assert detail == wanted, (index, got)
        assert {a["key_proof"] for a in tried} == {"none"}
    v1_attempts = [a for a in attempts if a["jig"].startswith("v1-")]
    assert len(v1_attempts) == V1_JIGS * 3
    assert {a["outcome"] for a in v1_attempts} == {"provisioned"}
    assert {a["key_proof"] for a in v1_attempts} == {"csr"}

    # The export says how each key was shown; never one DAC twice.
    by_jig_kind = {a["key_proof"] for a in assignments if a["jig"].startswith("ecc-")}
    assert by_jig_kind == {"none"}
    assert {a["key_proof"] for a in assignments if a["jig"].startswith("v1-")} == {"csr"}
    assert len({a["dac_serial"] for a in assignments}) == len(assignments)

    # Every letter DAC carries the public key its device generated (the simulator's record).
    keys = {d["uid"]: d["public_key_sha256"] for d in devices}
    letter_assignments = [a for a in assignments if a["jig"].startswith("ecc-")]
    for a in letter_assignments:
        dac = x509.load_pem_x509_certificate(a["dac_pem"].encode())
        spki = dac.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        assert hashlib.sha256(spki).hexdigest() == keys[a["uid"]], a["uid"]

    # The locked chip came back with the serial and key of a provisioned device: same DAC.
    (locked,) = [d for d in devices if d["personality"] == "locked"]
    assert locked["cloned_from"] == locked["uid"]
    locked_attempts = [a for a in attempts if a["uid"] == locked["uid"]]
    assert [a["outcome"] for a in locked_attempts] == ["provisioned", "provisioned"]
    assert len({a["dac_serial"] for a in locked_attempts}) == 1
    (cloned,) = [d for d in devices if d["personality"] == "cloned_key"]
    assert cloned["cloned_from"] is not None
    # A read-back that failed leaves the assignment unknown (the device is re-seated later).
    (corrupt,) = [d for d in devices if d["personality"] == "readback_corrupt"]
    assert [a["status"] for a in assignments if a["uid"] == corrupt["uid"]] == ["unknown"]
    (unplugged,) = [d for d in devices if d["personality"] == "unplug"]
    assert unplugged["ended"] == "unplugged"
    assert [a["status"] for a in assignments if a["uid"] == unplugged["uid"]] == ["unknown"]

    # Every confirmed DAC, v1 and letters alike, passes an independent verifier.
    confirmed = [a for a in assignments if a["status"] == "confirmed"]
    assert len(confirmed) == V1_JIGS * 3 + 13  # 14 letter attempts provisioned, one DAC twice
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

    result = linehost("audit", "--config", config, "verify", check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "audit verify: OK" in result.stdout
