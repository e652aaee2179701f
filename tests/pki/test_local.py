"""LocalIssuer: loading checks, the DAC it issues, and independent verification by openssl."""

from __future__ import annotations

import asyncio
import hashlib
import itertools
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.name import _ASN1Type
from cryptography.x509.oid import NameOID

from linehost.errors import IssuerError, PkiError
from linehost.pki.csr import parse_csr
from linehost.pki.devpki import DevPki, init_dev
from linehost.pki.issuer import Issuer
from linehost.pki.local import NO_EXPIRY, LocalIssuer
from linehost.pki.matter import OID_MATTER_PID, OID_MATTER_VID
from linehost.pki.profile import check_dac
from linehost.pki.signer import FileKeySigner
from linehost.records import CsrInfo

from .builders import (
    PAI_KEY,
    PlainSigner,
    make_csr,
    name,
    openssl_verify,
    paa_spec,
    pai_spec,
    run_tool,
    write,
)

UID = "0123456789ABCDEF"


def csr() -> CsrInfo:
    return parse_csr(make_csr())


def pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def pai_cert(dev_pki: DevPki) -> x509.Certificate:
    return x509.load_pem_x509_certificate(dev_pki.pai_cert.read_bytes())


async def test_issued_dac_fields_are_as_documented(issuer: LocalIssuer, dev_pki: DevPki) -> None:
    info = csr()
    before = datetime.now(UTC).replace(microsecond=0)
    dac = await issuer.issue(UID, info)
    after = datetime.now(UTC)
    cert = x509.load_der_x509_certificate(dac.der)

    assert dac.pem.endswith("-----END CERTIFICATE-----\n")
    assert "\r" not in dac.pem
    assert dac.pem.count("BEGIN CERTIFICATE") == 1
    assert x509.load_pem_x509_certificate(dac.pem.encode()) == cert
    assert dac.serial_hex == format(cert.serial_number, "X")
    assert not dac.serial_hex.startswith("0")
    assert dac.serial_hex == dac.serial_hex.upper()
    assert dac.sha256 == hashlib.sha256(dac.der).hexdigest()
    assert dac.public_key_sha256 == info.public_key_sha256
    assert (
        cert.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        == info.public_key_der
    )
    pai_der = pai_cert(dev_pki).public_bytes(serialization.Encoding.DER)
    assert dac.pai_sha256 == issuer.pai_sha256 == hashlib.sha256(pai_der).hexdigest()
    assert issuer.pai_pem == dev_pki.pai_cert.read_text()
    assert (dac.vid, dac.pid, issuer.vid, issuer.pid) == ("FFF1", "8000", "FFF1", "8000")
    assert dac.bundle_entry_id is None

    assert cert.issuer == pai_cert(dev_pki).subject
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == UID
    for oid, value in ((OID_MATTER_VID, "FFF1"), (OID_MATTER_PID, "8000")):
        (attr,) = cert.subject.get_attributes_for_oid(oid)
        assert attr.value == value
        assert attr._type == _ASN1Type.UTF8String
    assert before <= cert.not_valid_before_utc <= after
    assert cert.not_valid_after_utc == NO_EXPIRY
    assert 63 < cert.serial_number.bit_length() <= 159
    assert check_dac(cert, pai_cert(dev_pki)) == []
    bc = cert.extensions.get_extension_for_class(x509.BasicConstraints)
    assert bc.critical
    assert not bc.value.ca
    assert bc.value.path_length is None
    ku = cert.extensions.get_extension_for_class(x509.KeyUsage)
    assert ku.critical
    assert ku.value.digital_signature
    assert not ku.value.key_cert_sign
    skid = cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    assert (
        skid.key_identifier
        == hashlib.sha1(
            cert.public_key().public_bytes(
                serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
            )
        ).digest()
    )
    akid = cert.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    pai_skid = pai_cert(dev_pki).extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
    assert akid.key_identifier == pai_skid.value.key_identifier


async def test_openssl_verifies_the_chain_and_sees_the_matter_profile(
    issuer: LocalIssuer, dev_pki: DevPki, tmp_path: Path, openssl: str
) -> None:
    dac = await issuer.issue(UID, csr())
    path = write(tmp_path / "dac.pem", dac.pem)
    verify = openssl_verify(openssl, dev_pki.paa_cert, dev_pki.pai_cert, path)
    assert verify.returncode == 0, verify.stdout + verify.stderr
    assert verify.stdout.strip() == f"{path}: OK"

    text = run_tool(openssl, "x509", "-in", path, "-noout", "-text").stdout
    for expected in (
        "Version: 3 (0x2)",
        "Signature Algorithm: ecdsa-with-SHA256",
        f"Subject: CN={UID}, 1.3.6.1.4.1.37244.2.1=FFF1, 1.3.6.1.4.1.37244.2.2=8000",
        "NIST CURVE: P-256",
        "Not After : Dec 31 23:59:59 9999 GMT",
        "X509v3 Basic Constraints: critical",
        "CA:FALSE",
        "X509v3 Key Usage: critical",
        "X509v3 Subject Key Identifier",
        "X509v3 Authority Key Identifier",
    ):
        assert expected in text.replace(" = ", "="), expected
    usage = text.split("X509v3 Key Usage: critical")[1].splitlines()[1].strip()
    assert usage == "Digital Signature"

    # A DAC from some other PAI key must not verify: the check above is not vacuous.
    other = init_dev(tmp_path / "other")
    other_issuer = LocalIssuer.load(
        other.pai_cert, FileKeySigner.load(other.pai_key), "FFF1", "8000"
    )
    stranger = write(tmp_path / "stranger.pem", (await other_issuer.issue(UID, csr())).pem)
    refused = openssl_verify(openssl, dev_pki.paa_cert, dev_pki.pai_cert, stranger)
    assert refused.returncode != 0


async def test_serials_are_unique_random_and_in_range(issuer: LocalIssuer) -> None:
    info = csr()
    dacs = [await issuer.issue(f"{i:016X}", info) for i in range(500)]
    serials = [int(d.serial_hex, 16) for d in dacs]
    assert len(set(serials)) == len(serials)
    assert all(0 < s < 1 << 159 for s in serials)
    assert len({d.sha256 for d in dacs}) == len(dacs)
    # Random, not sequential: consecutive serials are far apart.
    assert all(abs(a - b) > 1 << 64 for a, b in itertools.pairwise(serials))


async def test_concurrent_issues_are_all_valid(issuer: LocalIssuer, dev_pki: DevPki) -> None:
    dacs = await asyncio.gather(*(issuer.issue(f"{i:08X}", csr()) for i in range(50)))
    pai = pai_cert(dev_pki)
    assert all(check_dac(x509.load_der_x509_certificate(d.der), pai) == [] for d in dacs)


async def test_issuer_satisfies_the_protocol(issuer: LocalIssuer) -> None:
    as_protocol: Issuer = issuer
    assert as_protocol.pai_pem.startswith("-----BEGIN CERTIFICATE-----")


async def test_backdate_is_clamped_to_the_pai_not_before(dev_pki: DevPki) -> None:
    signer = FileKeySigner.load(dev_pki.pai_key)
    pai_nb = pai_cert(dev_pki).not_valid_before_utc
    small = LocalIssuer.load(dev_pki.pai_cert, signer, "FFF1", "8000", backdate=timedelta(hours=1))
    cert = x509.load_der_x509_certificate((await small.issue(UID, csr())).der)
    expected = datetime.now(UTC) - timedelta(hours=1)
    assert abs(cert.not_valid_before_utc - expected) < timedelta(seconds=5)
    big = LocalIssuer.load(dev_pki.pai_cert, signer, "FFF1", "8000", backdate=timedelta(days=365))
    cert = x509.load_der_x509_certificate((await big.issue(UID, csr())).der)
    assert cert.not_valid_before_utc == pai_nb


async def test_cn_template_and_not_after(dev_pki: DevPki) -> None:
    until = datetime(2060, 1, 1, tzinfo=UTC)
    issuer = LocalIssuer.load(
        dev_pki.pai_cert,
        FileKeySigner.load(dev_pki.pai_key),
        "fff1",
        "8000",
        cn_template="Acme {vid}:{pid} {uid}",
        not_after=until,
    )
    cert = x509.load_der_x509_certificate((await issuer.issue("ABCD1234", csr())).der)
    assert (
        cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
        == "Acme FFF1:8000 ABCD1234"
    )
    assert cert.not_valid_after_utc == until
    with pytest.raises(IssuerError, match=r"^DAC common name is 65 bytes in UTF-8 \(1\.\.64\)$"):
        await issuer.issue("A" * 50, csr())


async def test_signer_failure_is_an_issuer_error(dev_pki: DevPki) -> None:
    class Failing(PlainSigner):
        async def sign(self, data: bytes) -> bytes:
            raise OSError("token removed")

    class Garbage(PlainSigner):
        async def sign(self, data: bytes) -> bytes:
            return b"\x30\x06\x02\x01\x01\x02\x01\x01"

    key = FileKeySigner.load(dev_pki.pai_key).private_key
    failing = LocalIssuer.load(dev_pki.pai_cert, Failing(key), "FFF1", "8000")
    with pytest.raises(IssuerError, match=r"^signer failed: OSError: token removed$"):
        await failing.issue(UID, csr())
    garbage = LocalIssuer.load(dev_pki.pai_cert, Garbage(key), "FFF1", "8000")
    with pytest.raises(
        IssuerError, match=r"fails the Matter profile: DAC signature does not verify"
    ):
        await garbage.issue(UID, csr())


async def test_non_file_signer_issues_through_the_assembly_path(dev_pki: DevPki) -> None:
    signer = PlainSigner(FileKeySigner.load(dev_pki.pai_key).private_key)
    issuer = LocalIssuer.load(dev_pki.pai_cert, signer, "FFF1", "8000")
    dac = await issuer.issue(UID, csr())
    assert signer.signed == [x509.load_der_x509_certificate(dac.der).tbs_certificate_bytes]
    assert check_dac(x509.load_der_x509_certificate(dac.der), pai_cert(dev_pki)) == []


def test_load_problems_name_the_file(dev_pki: DevPki, tmp_path: Path) -> None:
    signer = FileKeySigner.load(dev_pki.pai_key)
    missing = tmp_path / "missing.pem"
    with pytest.raises(PkiError, match=rf"^PAI certificate {missing}: unreadable"):
        LocalIssuer.load(missing, signer, "FFF1", "8000")
    junk = write(tmp_path / "junk.pem", "hello\n")
    with pytest.raises(PkiError, match=rf"^PAI certificate {junk}: not a PEM or DER X.509"):
        LocalIssuer.load(junk, signer, "FFF1", "8000")
    with pytest.raises(
        PkiError,
        match=rf"^PAI certificate {dev_pki.pai_cert}: PAI VID FFF1 differs from configured vid",
    ):
        LocalIssuer.load(dev_pki.pai_cert, signer, "FFF2", "8000")
    with pytest.raises(PkiError, match=r"PAI PID 8000 differs from configured pid 8001$"):
        LocalIssuer.load(dev_pki.pai_cert, signer, "FFF1", "8001")
    with pytest.raises(PkiError, match=r"^configured vid 'FFF': not 4 hex digits$"):
        LocalIssuer.load(dev_pki.pai_cert, signer, "FFF", "8000")
    other_key = FileKeySigner(ec.generate_private_key(ec.SECP256R1()))
    with pytest.raises(
        PkiError, match=rf"^PAI certificate {dev_pki.pai_cert}: signing key does not match"
    ):
        LocalIssuer.load(dev_pki.pai_cert, other_key, "FFF1", "8000")
    with pytest.raises(PkiError, match=r"^cn_template '\{serial\}': not a valid template"):
        LocalIssuer.load(dev_pki.pai_cert, signer, "FFF1", "8000", cn_template="{serial}")
    with pytest.raises(PkiError, match=r"not_after .* is in the past"):
        LocalIssuer.load(
            dev_pki.pai_cert, signer, "FFF1", "8000", not_after=datetime(2001, 1, 1, tzinfo=UTC)
        )


def test_expired_or_non_conforming_pai_is_refused(tmp_path: Path) -> None:
    signer = FileKeySigner(PAI_KEY)
    expired = write(
        tmp_path / "expired.pem", pem(pai_spec(not_after=datetime(2024, 1, 1, tzinfo=UTC)).build())
    )
    with pytest.raises(PkiError, match=rf"^PAI certificate {expired}: .*PAI expired on 2024-01-01"):
        LocalIssuer.load(expired, signer, "FFF1", "8000")
    pathlen = write(
        tmp_path / "pathlen.pem",
        pem(pai_spec(basic_constraints=x509.BasicConstraints(True, 1)).build()),
    )
    with pytest.raises(PkiError, match=rf"^PAI certificate {pathlen}: .*pathLen must be 0"):
        LocalIssuer.load(pathlen, signer, "FFF1", "8000")


def test_pai_not_issued_by_the_configured_paa_is_refused(tmp_path: Path) -> None:
    pai = write(tmp_path / "pai.pem", pem(pai_spec().build()))
    good_paa = write(tmp_path / "paa.pem", pem(paa_spec().build()))
    LocalIssuer.load(pai, FileKeySigner(PAI_KEY), "FFF1", "8000", paa_cert=good_paa)
    stranger = ec.generate_private_key(ec.SECP256R1())
    other = paa_spec(key=stranger, sign_key=stranger, subject=name("Test PAA", pid=None))
    other_paa = write(tmp_path / "other-paa.pem", pem(other.build()))
    with pytest.raises(PkiError, match=r"PAI authorityKeyIdentifier differs .* \(and 1 more\)$"):
        LocalIssuer.load(pai, FileKeySigner(PAI_KEY), "FFF1", "8000", paa_cert=other_paa)


def test_pai_without_pid_uses_the_configured_pid(tmp_path: Path) -> None:
    pai = write(tmp_path / "pai.pem", pem(pai_spec(subject=name("PAI", pid=None)).build()))
    issuer = LocalIssuer.load(pai, FileKeySigner(PAI_KEY), "FFF1", "8123")
    assert issuer.pid == "8123"
    cert = x509.load_der_x509_certificate(asyncio.run(issuer.issue(UID, csr())).der)
    assert cert.subject.get_attributes_for_oid(OID_MATTER_PID)[0].value == "8123"
