"""PAI rollover and a Certification Declaration per work order, end to end (issue 13 items 5, 6):
`linehost run` + `linehost sim` over ptys, a config change and a restart, then `pki revoke`,
`pki crl`, openssl and `audit verify` / `audit export` as an operator runs them."""

from __future__ import annotations

import hashlib
import json
import subprocess
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509

from linehost.pki.devpki import issue_dev_pai
from tests.e2e.harness import HostRun, SimRun, jsonl, linehost, wait_for, write_config

pytestmark = pytest.mark.timeout(300)
PER_JIG = 2  # devices per jig and run: two jigs, four devices per run


def openssl(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["openssl", *map(str, args)], capture_output=True, text=True)


def export(config: Path) -> list[dict[str, Any]]:
    return jsonl(linehost("audit", "--config", config, "export", "--format", "jsonl").stdout)


def skid(pai: Path) -> str:
    cert = x509.load_pem_x509_certificate(pai.read_bytes())
    value = cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    return value.digest.hex().upper()


def sha256_of_pem(path: Path) -> str:
    cert = x509.load_pem_x509_certificate(path.read_bytes())
    from cryptography.hazmat.primitives import serialization

    return hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()


def run_line(
    directory: Path, paa: Path, make_config: Any, *, seed: int
) -> tuple[Path, list[dict[str, Any]]]:
    """Provision 2 x PER_JIG simulated devices with the config `make_config(ports)` writes;
    return the config path and the simulator's device records."""
    directory.mkdir(parents=True, exist_ok=True)
    sim = SimRun(directory, jigs=2, devices=PER_JIG, mix="good", paa=paa, seed=seed).start()
    config: Path = make_config(sim.ports)
    host = HostRun(config).start()
    try:
        sim.wait(timeout=120)
    finally:
        sim.stop()
        code = host.stop()
    assert code == 0, host.output()[-3000:]
    return config, sim.devices_seen()


def pki_lines(active: Path, previous: Sequence[Path] = (), extra: str = "") -> str:
    """The `[pki]` table: `active` PAI directory, previous ones as [[pki.previous_pais]]."""
    text = (
        f'[pki]\npai_cert = "{active / "pai.pem"}"\npai_key = "{active / "pai.key"}"\n'
        f'paa_cert = "{active / "paa.pem"}"\nvid = "FFF1"\npid = "8000"\n{extra}'
    )
    for old in previous:
        text += (
            f'[[pki.previous_pais]]\npai_cert = "{old / "pai.pem"}"\n'
            f'pai_key = "{old / "pai.key"}"\n'
        )
    return text


def with_pki(config: Path, pki_text: str) -> Path:
    """Replace the `[pki]` table write_config made (up to `[protocol]`) with `pki_text`."""
    text = config.read_text()
    start, end = text.index("[pki]\n"), text.index("[protocol]\n")
    config.write_text(text[:start] + pki_text + text[end:])
    return config


@pytest.mark.slow
def test_pai_rollover_provision_revoke_crl_per_pai_and_verify(tmp_path: Path) -> None:
    pki_a, pki_b = tmp_path / "pki-a", tmp_path / "pki-b"
    linehost("pki", "init-dev", "--out", pki_a, "--no-cd")
    linehost("pki", "init-dev", "--out", pki_b, "--from-paa", pki_a)  # PAI B under the same PAA
    db = f"sqlite+aiosqlite:///{tmp_path / 'linehost.db'}"
    crl_dir = tmp_path / "crl-run"

    # 1. PAI A only: the old single-PAI config, unchanged
    def config_a(ports: dict[str, str]) -> Path:
        return write_config(tmp_path / "line.toml", pki=pki_a, ports=ports, database_url=db)

    config, _ = run_line(tmp_path / "run-a", pki_a / "paa.pem", config_a, seed=7)

    # 2. roll over: PAI B active, PAI A previous; restart with more devices
    def config_b(ports: dict[str, str]) -> Path:
        path = write_config(tmp_path / "line.toml", pki=pki_a, ports=ports, database_url=db)
        return with_pki(path, pki_lines(pki_b, [pki_a], extra=f'crl_dir = "{crl_dir}"\n'))

    config, _ = run_line(tmp_path / "run-b", pki_a / "paa.pem", config_b, seed=8)
    host_log = (tmp_path / "line.log").read_text()
    assert "pais_configured" in host_log
    # `linehost run` keeps one CRL per PAI in crl_dir
    assert sorted(p.name for p in crl_dir.iterdir()) == sorted(
        f"pai-{skid(p / 'pai.pem')}.crl" for p in (pki_a, pki_b)
    )

    records = [r for r in export(config) if r["status"] == "confirmed"]
    pai_of = {sha256_of_pem(p / "pai.pem"): p for p in (pki_a, pki_b)}
    under = {p: [r for r in records if pai_of[r["pai_sha256"]] == p] for p in (pki_a, pki_b)}
    assert len(under[pki_a]) == len(under[pki_b]) == 2 * PER_JIG
    for directory, group in under.items():
        for record in group:  # each DAC names its own PAI by AKID
            dac = x509.load_pem_x509_certificate(record["dac_pem"].encode())
            akid = dac.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
            assert akid.key_identifier is not None
            assert akid.key_identifier.hex().upper() == skid(directory / "pai.pem")

    # 3. revoke one DAC of each PAI
    revoked = {under[pki_a][0]["dac_serial"], under[pki_b][0]["dac_serial"]}
    for serial in sorted(revoked):
        done = linehost(
            "pki", "revoke", "--config", config, "--serial", serial, "--reason", "keyCompromise"
        )
        assert f"REVOKED {serial}" in done.stdout

    # 4. one CRL per PAI, each signed by its PAI and listing only its own revoked DAC
    out = tmp_path / "crl"
    out.mkdir()
    printed = linehost("pki", "crl", "--config", config, "--out", out).stdout
    assert "(active)" in printed, printed
    assert "(previous)" in printed, printed
    crl_file = {p: out / f"pai-{skid(p / 'pai.pem')}.crl" for p in (pki_a, pki_b)}
    assert sorted(out.iterdir()) == sorted(crl_file.values())
    for directory, crl in crl_file.items():
        checked = openssl("crl", "-in", crl, "-noout", "-verify", "-CAfile", directory / "pai.pem")
        assert "verify OK" in checked.stdout + checked.stderr, checked.stderr
        other = pki_b if directory == pki_a else pki_a
        wrong = openssl("crl", "-in", crl, "-noout", "-verify", "-CAfile", other / "pai.pem")
        assert "verify OK" not in wrong.stdout + wrong.stderr
        listed = {f"{e.serial_number:X}" for e in x509.load_pem_x509_crl(crl.read_bytes())}
        assert listed == {r["dac_serial"] for r in under[directory]} & revoked
    for directory, group in under.items():
        for record in group:
            dac = tmp_path / f"{record['dac_serial']}.pem"
            dac.write_text(record["dac_pem"])
            result = openssl(
                "verify", "-crl_check", "-CRLfile", crl_file[directory],
                "-CAfile", pki_a / "paa.pem", "-untrusted", directory / "pai.pem", dac,
            )  # fmt: skip
            text = result.stdout + result.stderr
            if record["dac_serial"] in revoked:
                assert "certificate revoked" in text, text
            else:
                assert result.returncode == 0, text
                assert f"{dac}: OK" in text, text

    # the Matter revocation set: one entry per PAI
    rset = tmp_path / "revocation-set.json"
    linehost("pki", "revocation-set", "--config", config, "--out", rset)
    entries = json.loads(rset.read_text())
    assert {e["issuer_subject_key_id"] for e in entries} == {
        skid(p / "pai.pem") for p in (pki_a, pki_b)
    }
    assert sum(len(e["revoked_serial_numbers"]) for e in entries) == 2

    # 5. audit verify checks each DAC against the PAI that issued it
    verified = linehost("audit", "--config", config, "verify", check=False)
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert f"{4 * PER_JIG} DAC(s) chain to the PAI that issued each (2 PAIs)" in verified.stdout
    # without PAI A in the config its DACs are reported, each by its AKID
    only_b = tmp_path / "only-b.toml"
    only_b.write_text(config.read_text())
    with_pki(only_b, pki_lines(pki_b))
    failed = linehost("audit", "--config", only_b, "verify", check=False)
    assert failed.returncode == 1, failed.stdout
    assert failed.stdout.count("issued under a PAI not in [pki]") == 2 * PER_JIG, failed.stdout


def test_active_pai_expiry_warns_and_an_expired_one_is_refused(tmp_path: Path) -> None:
    pki_a = tmp_path / "pki-a"
    linehost("pki", "init-dev", "--out", pki_a, "--no-cd")
    short = tmp_path / "pki-short"
    linehost("pki", "init-dev", "--out", short, "--from-paa", pki_a, "--valid-days", "5")
    expired = tmp_path / "pki-expired"
    issue_dev_pai(pki_a, expired, not_after=datetime.now(UTC) - timedelta(hours=1))
    config = write_config(tmp_path / "line.toml", pki=pki_a, ports={})

    # 5 days left, a 30-day margin (the default): the host starts and warns once
    with_pki(config, pki_lines(short, [pki_a]))
    host = HostRun(config).start()
    try:
        wait_for(lambda: "line_started" in host.output(), 60, "the line to start")
    finally:
        code = host.stop()
    log = host.output()
    assert code == 0, log[-3000:]
    assert log.count("event=pai_expires_soon") == 1, log[-3000:]
    assert "days left, pki.pai_expiry_warning is 30 days" in log
    # a 2-day margin: no warning
    with_pki(config, pki_lines(short, [pki_a], extra='pai_expiry_warning = "P2D"\n'))
    host = HostRun(config).start()
    try:
        wait_for(lambda: "line_started" in host.output(), 60, "the line to start")
    finally:
        assert host.stop() == 0
    assert "pai_expires_soon" not in host.output()

    # the active PAI has expired: one line, exit 2, nothing started
    with_pki(config, pki_lines(expired, [pki_a]))
    done = linehost("run", "--config", config, check=False)
    assert done.returncode == 2, done.stdout + done.stderr
    assert done.stderr.count("\n") == 1, done.stderr
    assert "PAI expired on" in done.stderr, done.stderr
    assert str(expired / "pai.pem") in done.stderr

    # an expired PAI among the previous ones is fine: it only verifies and gets CRLs
    with_pki(config, pki_lines(pki_a, [expired]))
    host = HostRun(config).start()
    try:
        wait_for(lambda: "line_started" in host.output(), 60, "the line to start")
    finally:
        assert host.stop() == 0, host.output()[-3000:]
    crl = tmp_path / "crl"
    crl.mkdir()
    linehost("pki", "crl", "--config", config, "--out", crl)
    assert len(list(crl.iterdir())) == 2


# --- a Certification Declaration per work order -----------------------------------------------


def work_order_table(cd: Path | None, *, wo: str = "WO-CD-1", firmware: str = "1.4.2") -> str:
    text = f'[work_order]\nid = "{wo}"\nquantity = 100\nfirmware_version = "{firmware}"\n'
    return text + (f'cd_file = "{cd}"\n' if cd is not None else "")


@pytest.mark.slow
def test_work_order_cd_is_delivered_recorded_and_checked(tmp_path: Path) -> None:
    pki = tmp_path / "pki"
    linehost("pki", "init-dev", "--out", pki)  # its cd.der is the line default ([pki] cd_file)
    wo_cd = tmp_path / "wo-cd"  # another test CD for FFF1/8000, another CD signing key
    linehost("pki", "init-dev", "--out", wo_cd)
    other_pid = tmp_path / "cd-8001"
    linehost("pki", "init-dev", "--out", other_pid, "--pid", "8001")
    signers = [wo_cd / "cd-signer.pem", other_pid / "cd-signer.pem"]
    pki_extra = (
        f'cd_file = "{pki / "cd.der"}"\ncd_signer_certs = {json.dumps(list(map(str, signers)))}\n'
    )
    db = f"sqlite+aiosqlite:///{tmp_path / 'linehost.db'}"

    def config_for(ports: dict[str, str], cd: Path | None = wo_cd / "cd.der") -> Path:
        path = write_config(
            tmp_path / "line.toml", pki=pki, ports=ports, database_url=db,
            extra=work_order_table(cd),
        )  # fmt: skip
        text = path.read_text().replace('pid = "8000"\n', f'pid = "8000"\n{pki_extra}', 1)
        path.write_text(text)
        return path

    config, devices = run_line(tmp_path / "run", pki / "paa.pem", config_for, seed=11)
    want = hashlib.sha256((wo_cd / "cd.der").read_bytes()).hexdigest()
    default = hashlib.sha256((pki / "cd.der").read_bytes()).hexdigest()
    assert want != default
    stored = [d for d in devices if d["finish_code"] == 0]
    assert len(stored) == 2 * PER_JIG
    assert {d["stored_cd_sha256"] for d in stored} == {want}  # what the devices received
    records = export(config)
    assert len(records) == 2 * PER_JIG
    assert {r["cd_sha256"] for r in records} == {want}
    assert {r["work_order"] for r in records} == {"WO-CD-1"}
    csv_out = linehost("audit", "--config", config, "export", "--format", "csv").stdout
    assert csv_out.splitlines()[0].endswith(",cd_sha256")
    shown = linehost("audit", "--config", config, "dac", records[0]["dac_serial"]).stdout
    assert f"CD sha256   {want}" in shown
    shown = linehost("audit", "--config", config, "uid", records[0]["uid"]).stdout
    assert f"CD sha256 {want[:16]}" in shown
    assert "cd_sha256=" + want in (tmp_path / "line.log").read_text()  # work_order_open
    assert linehost("audit", "--config", config, "verify", check=False).returncode == 0

    # refusals at work-order open: one line, exit 2, nothing recorded
    bad_signature = tmp_path / "bad-signature.der"
    data = bytearray((wo_cd / "cd.der").read_bytes())
    data[-1] ^= 0x01  # the last byte of the SignerInfo's ECDSA signature
    bad_signature.write_bytes(bytes(data))
    unknown_signer = tmp_path / "unknown-signer"
    linehost("pki", "init-dev", "--out", unknown_signer)
    cases = [
        (other_pid / "cd.der", "certifies VID FFF1 PID 8001, not FFF1/8000"),
        (bad_signature, "bad signature"),
        (unknown_signer / "cd.der", "signed by an unknown CD signer"),
    ]
    for cd, message in cases:
        config_for({}, cd).write_text(config.read_text().replace('"WO-CD-1"', '"WO-CD-2"'))
        done = linehost("run", "--config", config, check=False)
        assert done.returncode == 2, (cd, done.stdout, done.stderr)
        assert done.stderr.count("\n") == 1, done.stderr
        assert "work order WO-CD-2: CD file" in done.stderr, done.stderr
        assert message in done.stderr, done.stderr
    # the same work order with another (valid) CD than the database holds
    text = config_for({}, pki / "cd.der").read_text()
    config.write_text(
        text.replace(json.dumps(list(map(str, signers))),
                     json.dumps([*map(str, signers), str(pki / "cd-signer.pem")]))
    )  # fmt: skip
    done = linehost("run", "--config", config, check=False)
    assert done.returncode != 0
    assert "work order WO-CD-1 was opened with CD" in done.stderr, done.stderr
    # a work-order CD without signing certificates to check it against
    no_signers = config_for({}).read_text().replace(pki_extra, f'cd_file = "{pki / "cd.der"}"\n')
    (tmp_path / "no-signers.toml").write_text(no_signers)
    done = linehost("run", "--config", tmp_path / "no-signers.toml", check=False)
    assert done.returncode == 2
    assert "work_order.cd_file needs pki.cd_signer_certs" in done.stderr, done.stderr
    assert len(export(config)) == 2 * PER_JIG  # nothing more was recorded
