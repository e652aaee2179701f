"""Revocation end to end: provision with `linehost run` and the simulator, revoke by UID and by
serial, then check the CRL with openssl, the Matter revocation set, the export and the audit chain
(PAI key in a file, in SoftHSM2, and a delegated CRL signer)."""

from __future__ import annotations

import base64
import json
import shutil
import sqlite3
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from tests.e2e.harness import HostRun, SimRun, jsonl, linehost, write_config
from tests.e2e.test_hsm_and_bundle import PIN, PIN_ENV, TOKEN, Hsm, hsm  # noqa: F401

DEVICES = 6
REVOKE_BY_UID = 2
pytestmark = pytest.mark.timeout(240)


@pytest.fixture(scope="module")
def dev_pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("pki") / "pki"
    linehost("pki", "init-dev", "--out", out)
    return out


def provision(
    tmp_path: Path, pki: Path, *, extra_pki: str = "", pai_key: str | None = None
) -> Path:
    """Run a line of two jigs until DEVICES good devices are provisioned; the config path."""
    sim = SimRun(tmp_path, jigs=2, devices=DEVICES // 2, mix="good", paa=pki / "paa.pem").start()
    config = write_config(tmp_path / "line.toml", pki=pki, ports=sim.ports)
    text = config.read_text()
    if extra_pki:
        text = text.replace('pid = "8000"\n', f'pid = "8000"\n{extra_pki}', 1)
    if pai_key is not None:
        text = text.replace(f'pai_key = "{pki / "pai.key"}"', f'pai_key = "{pai_key}"', 1)
    config.write_text(text)
    host = HostRun(config).start()
    try:
        sim.wait(timeout=120)
    finally:
        sim.stop()
        code = host.stop()
    assert code == 0, host.output()[-3000:]
    return config


def export(config: Path) -> list[dict[str, Any]]:
    return jsonl(linehost("audit", "--config", config, "export", "--format", "jsonl").stdout)


def openssl(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["openssl", *map(str, args)], capture_output=True, text=True)


def revoke_and_check(
    tmp_path: Path, config: Path, pki: Path, *, signer_cert: Path | None = None
) -> None:
    """Revoke two DACs by UID and one by serial; check CRL, revocation set, export, audit."""
    records = [r for r in export(config) if r["status"] == "confirmed"]
    assert len(records) == DEVICES
    by_uid, by_serial = records[:REVOKE_BY_UID], records[REVOKE_BY_UID]
    for record in by_uid:
        done = linehost(
            "pki", "revoke", "--config", config, "--uid", record["uid"], "--reason",
            "keyCompromise",
        )  # fmt: skip
        assert f"REVOKED {record['dac_serial']}" in done.stdout
    linehost(
        "pki", "revoke", "--config", config, "--serial", by_serial["dac_serial"].lower(),
        "--reason", "cessationOfOperation",
    )  # fmt: skip
    revoked = {r["dac_serial"] for r in [*by_uid, by_serial]}

    # a second revoke of the same DAC: one line, exit 2, nothing changed
    again = linehost(
        "pki", "revoke", "--config", config, "--uid", by_uid[0]["uid"], "--reason", "superseded",
        check=False,
    )  # fmt: skip
    assert again.returncode == 2
    assert again.stderr.count("\n") == 1, again.stderr
    assert "already revoked" in again.stderr, again.stderr

    crl = tmp_path / "pai.crl"
    first = linehost("pki", "crl", "--config", config, "--out", crl).stdout
    assert "3 revoked DAC(s)" in first, first
    issuer_file = signer_cert or pki / "pai.pem"
    checked = openssl("crl", "-in", crl, "-noout", "-verify", "-CAfile", issuer_file)
    assert "verify OK" in checked.stdout + checked.stderr, checked.stderr
    text = openssl("crl", "-in", crl, "-noout", "-text").stdout
    assert "X509v3 Authority Key Identifier" in text
    assert "X509v3 CRL Number" in text
    assert "Key Compromise" in text
    assert "Cessation Of Operation" in text
    if signer_cert is not None:
        assert "Indirect CRL" in text
        assert "Certificate Issuer" in text

    if signer_cert is not None:
        _check_indirect(tmp_path, crl, pki, signer_cert, records, revoked)
    else:
        _check_with_openssl_verify(tmp_path, crl, pki, records, revoked)

    # the revocation set: exactly the revoked serials under the PAI's SKID and subject
    rset_file = tmp_path / "revocation-set.json"
    linehost("pki", "revocation-set", "--config", config, "--out", rset_file)
    [entry] = json.loads(rset_file.read_text())
    pai = x509.load_pem_x509_certificate((pki / "pai.pem").read_bytes())
    skid = pai.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    assert entry["type"] == "revocation_set"
    assert entry["issuer_subject_key_id"] == skid.key_identifier.hex().upper()
    assert base64.b64decode(entry["issuer_name"]) == pai.subject.public_bytes()
    expected = set()
    for record in records:
        if record["dac_serial"] in revoked:
            cert = x509.load_pem_x509_certificate(record["dac_pem"].encode())
            der = cert.public_bytes(serialization.Encoding.DER)
            expected.add(_serial_octets(der))
            assert cert.issuer.public_bytes() == pai.subject.public_bytes()
    assert set(entry["revoked_serial_numbers"]) == expected
    assert len(entry["revoked_serial_numbers"]) == 3
    signer_der = x509.load_pem_x509_certificate(issuer_file.read_bytes()).public_bytes(
        serialization.Encoding.DER
    )
    assert base64.b64decode(entry["crl_signer_cert"]) == signer_der
    if signer_cert is not None:
        pai_der = pai.public_bytes(serialization.Encoding.DER)
        assert base64.b64decode(entry["crl_signer_delegator"]) == pai_der
    else:
        assert "crl_signer_delegator" not in entry

    # the export shows the revocations; the audit chain holds
    after = {r["dac_serial"]: r for r in export(config)}
    for serial, record in after.items():
        if serial in revoked:
            assert record["revoked_at"] is not None
            want = "cessationOfOperation" if serial == by_serial["dac_serial"] else "keyCompromise"
            assert record["revocation_reason"] == want
        else:
            assert record["revoked_at"] is None
            assert record["revocation_reason"] is None
    shown = linehost("audit", "--config", config, "dac", by_serial["dac_serial"]).stdout
    assert "REVOKED" in shown
    assert "assignment_revoked" in shown
    verified = linehost("audit", "--config", config, "verify", check=False)
    assert verified.returncode == 0, verified.stdout + verified.stderr

    # the DCL arguments, checked against the CRL just written
    dcl = linehost(
        "pki", "dcl-revocation-point", "--config", config, "--crl", crl,
        "--data-url", "https://crl.example.com/pai.crl",
    ).stdout  # fmt: skip
    assert dcl.startswith("dcld tx pki add-revocation-point ")
    crl_der = x509.load_pem_x509_crl(crl.read_bytes()).public_bytes(serialization.Encoding.DER)
    signer = x509.load_pem_x509_certificate(issuer_file.read_bytes())
    signer_skid = signer.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    for arg in (
        "--vid=0xFFF1", "--pid=0x8000", "--is-paa=false", "--revocation-type=1",
        f"--issuer-subject-key-id={signer_skid.key_identifier.hex().upper()}",
        f"--data-file-size={len(crl_der)}", "--data-url=https://crl.example.com/pai.crl",
    ):  # fmt: skip
        assert arg in dcl, (arg, dcl)
    assert ("--certificate-delegator=" in dcl) == (signer_cert is not None)
    bad_url = linehost(
        "pki", "dcl-revocation-point", "--config", config, "--crl", crl, "--data-url", "ftp://x",
        check=False,
    )  # fmt: skip
    assert bad_url.returncode == 2, bad_url.stderr

    # CRL numbers only grow, across processes
    second = linehost("pki", "crl", "--config", config, "--out", crl, "--der").stdout
    numbers = [int(line.split("number ")[1].split(",")[0]) for line in (first, second)]
    assert numbers[1] == numbers[0] + 1
    parsed = x509.load_der_x509_crl(crl.read_bytes())
    assert (
        parsed.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number == (numbers[1])
    )


def _check_with_openssl_verify(
    tmp_path: Path, crl: Path, pki: Path, records: list[dict[str, Any]], revoked: set[str]
) -> None:
    """`openssl verify -crl_check`: revoked DACs are refused, the others chain."""
    for record in records:
        dac = tmp_path / f"{record['dac_serial']}.pem"
        dac.write_text(record["dac_pem"])
        result = openssl(
            "verify", "-crl_check", "-CRLfile", crl, "-CAfile", pki / "paa.pem",
            "-untrusted", pki / "pai.pem", dac,
        )  # fmt: skip
        out = result.stdout + result.stderr
        if record["dac_serial"] in revoked:
            assert "certificate revoked" in out, out
        else:
            assert result.returncode == 0, out
            assert f"{dac}: OK" in out, out


def _check_indirect(
    tmp_path: Path,
    crl: Path,
    pki: Path,
    signer_cert: Path,
    records: list[dict[str, Any]],
    revoked: set[str],
) -> None:
    """An indirect CRL: OpenSSL applies one only to certificates carrying a CRL distribution
    point that names its issuer, which DACs do not; so check its parts instead: the signer
    chains to the PAA through the PAI, and each entry names a revoked DAC and the PAI."""
    chained = openssl("verify", "-CAfile", pki / "paa.pem", "-untrusted", pki / "pai.pem",
                      signer_cert)  # fmt: skip
    assert chained.returncode == 0, chained.stdout + chained.stderr
    pai = x509.load_pem_x509_certificate((pki / "pai.pem").read_bytes())
    parsed = x509.load_pem_x509_crl(crl.read_bytes())
    idp = parsed.extensions.get_extension_for_class(x509.IssuingDistributionPoint)
    assert idp.critical
    assert idp.value.indirect_crl
    listed = set()
    for entry in parsed:
        issuer = entry.extensions.get_extension_for_class(x509.CertificateIssuer)
        assert issuer.critical
        assert list(issuer.value) == [x509.DirectoryName(pai.subject)]
        listed.add(f"{entry.serial_number:X}")
    assert listed == revoked
    assert {r["dac_serial"] for r in records} >= revoked


def _serial_octets(cert_der: bytes) -> str:
    """The DAC's serial INTEGER content octets, read straight from the certificate bytes."""
    from linehost.pki import der

    tbs = der.children(cert_der)[0]
    serial = der.children(tbs)[1]
    _tag, start, end = der.read_element(serial)
    return serial[start:end].hex().upper()


@pytest.mark.slow
def test_revoke_with_the_pai_key_in_a_file(tmp_path: Path, dev_pki: Path) -> None:
    config = provision(tmp_path, dev_pki)
    revoke_and_check(tmp_path, config, dev_pki)


@pytest.mark.slow
@pytest.mark.hsm
def test_revoke_with_the_pai_key_in_softhsm(
    tmp_path: Path,
    hsm: Hsm,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("SOFTHSM2_CONF", str(hsm.conf))
    monkeypatch.setenv(PIN_ENV, PIN)
    extra = f'pkcs11_module = "/usr/lib/softhsm/libsofthsm2.so"\npkcs11_pin_env = "{PIN_ENV}"\n'
    pki = tmp_path / "pki"
    shutil.copytree(hsm.pki, pki)
    config = provision(tmp_path, pki, extra_pki=extra, pai_key=f"pkcs11:token={TOKEN};object=pai")
    assert not (pki / "pai.key").exists()
    revoke_and_check(tmp_path, config, pki)


@pytest.mark.slow
def test_revoke_with_a_delegated_crl_signer(tmp_path: Path, dev_pki: Path) -> None:
    signer_cert, signer_key = make_crl_signer(tmp_path, dev_pki)
    extra = f'crl_signer_cert = "{signer_cert}"\ncrl_signer_key = "{signer_key}"\n'
    config = provision(tmp_path, dev_pki, extra_pki=extra)
    revoke_and_check(tmp_path, config, dev_pki, signer_cert=signer_cert)


def make_crl_signer(tmp_path: Path, pki: Path) -> tuple[Path, Path]:
    """A delegated CRL signer certificate issued by the development PAI (cRLSign only)."""
    pai = x509.load_pem_x509_certificate((pki / "pai.pem").read_bytes())
    pai_key = serialization.load_pem_private_key((pki / "pai.key").read_bytes(), None)
    assert isinstance(pai_key, ec.EllipticCurvePrivateKey)
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(
            x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "linehost CRL signer")])
        )
        .issuer_name(pai.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(max(now - timedelta(hours=1), pai.not_valid_before_utc))
        .not_valid_after(min(now + timedelta(days=365), pai.not_valid_after_utc))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, False, True, False, False),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(pai_key.public_key()), False
        )
        .sign(pai_key, hashes.SHA256())
    )
    cert_path, key_path = tmp_path / "crl-signer.pem", tmp_path / "crl-signer.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


def test_bad_revoke_input_is_one_line_and_changes_nothing(tmp_path: Path, dev_pki: Path) -> None:
    config = write_config(tmp_path / "line.toml", pki=dev_pki, ports={"j1": "/nonexistent"})
    linehost("db", "upgrade", "--config", config)
    cases = [
        (["--uid", "00112233AABBCCDD"], "unknown UID 00112233AABBCCDD"),
        (["--uid", "xyz"], "malformed UID"),
        (["--serial", "12G4"], "malformed DAC serial"),
        (["--serial", "1" * 41], "malformed DAC serial"),
        (["--sha256", "ab"], "malformed SHA-256"),
    ]
    for args, message in cases:
        done = linehost(
            "pki", "revoke", "--config", config, *args, "--reason", "keyCompromise", check=False
        )
        assert done.returncode == 2, done
        assert done.stderr.count("\n") == 1, done.stderr
        assert message in done.stderr, done.stderr
    bad_reason = linehost(
        "pki", "revoke", "--config", config, "--uid", "00112233AABBCCDD", "--reason", "bored",
        check=False,
    )  # fmt: skip
    assert bad_reason.returncode == 2
    assert "unknown revocation reason 'bored'" in bad_reason.stderr
    assert bad_reason.stderr.count("\n") == 1
    db = sqlite3.connect(tmp_path / "linehost.db")
    assert db.execute("SELECT count(*) FROM revocations").fetchone() == (0,)
    assert db.execute("SELECT count(*) FROM audit_log").fetchone() == (0,)


def test_crl_needs_a_key(tmp_path: Path, dev_pki: Path) -> None:
    config = tmp_path / "bundle.toml"
    config.write_text(
        f'[line]\nname = "l"\n[database]\nurl = "sqlite+aiosqlite:///{tmp_path / "l.db"}"\n'
        f'[pki]\nissuer = "bundle"\npai_cert = "{dev_pki / "pai.pem"}"\n'
        f'paa_cert = "{dev_pki / "paa.pem"}"\nvid = "FFF1"\npid = "8000"\n'
        '[[jigs]]\nname = "j1"\nstation = "s"\nport = "/nonexistent"\n'
    )
    done = linehost("pki", "crl", "--config", config, "--out", tmp_path / "x.crl", check=False)
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1, done.stderr
    assert "no key to sign its CRL" in done.stderr, done.stderr
    assert not (tmp_path / "x.crl").exists()


@pytest.mark.slow
def test_run_keeps_the_crl_current(tmp_path: Path, dev_pki: Path) -> None:
    """`linehost run` with crl_dir: a CRL at start, re-signed (higher number) after a revoke
    made while it runs, and the seconds to nextUpdate on /metrics."""
    import socket
    import urllib.request

    from tests.e2e.harness import wait_for

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    crl_dir = tmp_path / "crl"
    sim = SimRun(tmp_path, jigs=2, devices=2, mix="good", paa=dev_pki / "paa.pem").start()
    config = write_config(
        tmp_path / "line.toml",
        pki=dev_pki,
        ports=sim.ports,
        extra=f'[metrics]\nlisten = "127.0.0.1:{port}"\n',
    )
    text = config.read_text().replace(
        'pid = "8000"\n', f'pid = "8000"\ncrl_dir = "{crl_dir}"\ncrl_next_update = "P10D"\n', 1
    )
    config.write_text(text)
    host = HostRun(config).start()
    try:
        sim.wait(timeout=120)
        [crl_file] = wait_for_files(crl_dir, host)
        first = x509.load_der_x509_crl(crl_file.read_bytes())
        assert len(first) == 0
        number = first.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
        record = export(config)[0]
        linehost(
            "pki", "revoke", "--config", config, "--uid", record["uid"], "--reason",
            "keyCompromise",
        )  # fmt: skip

        def resigned() -> bool:
            crl = x509.load_der_x509_crl(crl_file.read_bytes())
            return len(crl) == 1

        wait_for(resigned, 20, "the CRL re-signed with the revoked DAC")
        second = x509.load_der_x509_crl(crl_file.read_bytes())
        assert second.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number > number
        assert [f"{e.serial_number:X}" for e in second] == [record["dac_serial"]]
        assert second.next_update_utc is not None
        assert second.last_update_utc is not None
        assert second.next_update_utc - second.last_update_utc == timedelta(days=10)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as page:
            metrics = page.read().decode()
        [sample] = [
            line for line in metrics.splitlines()
            if line.startswith("linehost_crl_seconds_to_next_update ")
        ]  # fmt: skip
        remaining = float(sample.split()[1])
        assert 9 * 86400 < remaining <= 10 * 86400
    finally:
        sim.stop()
        code = host.stop()
    assert code == 0, host.output()[-3000:]
    assert "crl_signed" in host.output()


def wait_for_files(directory: Path, host: HostRun) -> list[Path]:
    from tests.e2e.harness import wait_for

    wait_for(lambda: any(directory.glob("*.crl")), 30, f"a CRL in {directory}\n{host.output()}")
    return sorted(directory.glob("*.crl"))
