"""FileKeySigner loading and signing; certificate assembly from a TBSCertificate."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from linehost.errors import PkiError
from linehost.pki import der
from linehost.pki.devpki import DevPki
from linehost.pki.profile import check_dac
from linehost.pki.signer import (
    ECDSA_WITH_SHA256_ALGID,
    FileKeySigner,
    Signer,
    assemble_certificate,
    sign_certificate,
    tbs_certificate,
)

from .builders import (
    PAI_KEY,
    PAI_NAME,
    PlainSigner,
    dac_spec,
    name,
    openssl_verify,
    pai_spec,
    write,
)


def key_pem(
    key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey,
    fmt: serialization.PrivateFormat = serialization.PrivateFormat.PKCS8,
    passphrase: bytes | None = None,
) -> bytes:
    enc: serialization.KeySerializationEncryption = (
        serialization.BestAvailableEncryption(passphrase)
        if passphrase
        else serialization.NoEncryption()
    )
    return key.private_bytes(serialization.Encoding.PEM, fmt, enc)


@pytest.mark.parametrize(
    "fmt", [serialization.PrivateFormat.PKCS8, serialization.PrivateFormat.TraditionalOpenSSL]
)
async def test_file_key_signs_verifiable_der_ecdsa(
    tmp_path: Path, fmt: serialization.PrivateFormat
) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    signer = FileKeySigner.load(write(tmp_path / "k.pem", key_pem(key, fmt)))
    assert isinstance(signer, Signer)
    signature = await signer.sign(b"tbs")
    assert signature[0] == der.TAG_SEQUENCE
    key.public_key().verify(signature, b"tbs", ec.ECDSA(hashes.SHA256()))
    with pytest.raises(InvalidSignature):
        key.public_key().verify(signature, b"other", ec.ECDSA(hashes.SHA256()))
    assert signer.public_key().public_numbers() == key.public_key().public_numbers()
    await signer.aclose()


def test_encrypted_key_loads_with_its_passphrase(tmp_path: Path) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    path = write(tmp_path / "k.pem", key_pem(key, passphrase=b"s3cret"))
    signer = FileKeySigner.load(path, b"s3cret")
    assert signer.public_key().public_numbers() == key.public_key().public_numbers()


@pytest.mark.parametrize(
    ("content", "passphrase", "message"),
    [
        (None, None, r"unreadable"),
        (b"not a key", None, r"not a PEM private key"),
        ("encrypted", None, r"encrypted and no passphrase was given"),
        ("encrypted", b"wrong", r"wrong passphrase or damaged key"),
        ("p384", None, r"not EC P-256 \(secp384r1\)"),
        ("rsa", None, r"not an EC key"),
    ],
)
def test_bad_key_file_names_the_file_and_the_problem(
    tmp_path: Path, content: bytes | str | None, passphrase: bytes | None, message: str
) -> None:
    path = tmp_path / "pai.key"
    if content == "encrypted":
        path.write_bytes(key_pem(ec.generate_private_key(ec.SECP256R1()), passphrase=b"right"))
    elif content == "p384":
        path.write_bytes(key_pem(ec.generate_private_key(ec.SECP384R1())))
    elif content == "rsa":
        path.write_bytes(key_pem(rsa.generate_private_key(65537, 2048)))
    elif isinstance(content, bytes):
        path.write_bytes(content)
    with pytest.raises(PkiError, match=rf"^key {path}: .*{message}"):
        FileKeySigner.load(path, passphrase)


def test_assemble_certificate_wraps_tbs_and_signature() -> None:
    cert = dac_spec().build()
    tbs = cert.tbs_certificate_bytes
    sig = PAI_KEY.sign(tbs, ec.ECDSA(hashes.SHA256()))
    assembled = assemble_certificate(tbs, sig)
    tbs_el, algid, bits = der.children(assembled)
    assert (tbs_el, algid) == (tbs, ECDSA_WITH_SHA256_ALGID)
    assert bits == der.tlv(der.TAG_BIT_STRING, b"\x00" + sig)
    parsed = x509.load_der_x509_certificate(assembled)
    assert parsed.signature == sig
    assert parsed.tbs_certificate_bytes == tbs
    parsed.verify_directly_issued_by(pai_spec().build())


def builder() -> x509.CertificateBuilder:
    spec = dac_spec()
    reference = spec.build()
    b = x509.CertificateBuilder(
        issuer_name=PAI_NAME,
        subject_name=name("assembled"),
        public_key=spec.key.public_key(),
        serial_number=reference.serial_number,
        not_valid_before=datetime(2022, 1, 1, tzinfo=UTC),
        not_valid_after=datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC),
    )
    for ext in reference.extensions:
        b = b.add_extension(ext.value, ext.critical)
    return b


async def test_assembly_path_and_direct_path_give_the_same_certificate_profile() -> None:
    plain = PlainSigner(PAI_KEY)
    assembled = await sign_certificate(builder(), plain)
    direct = await sign_certificate(builder(), FileKeySigner(PAI_KEY))
    assert plain.signed == [assembled.tbs_certificate_bytes]
    # Same TBS bytes both ways: only the (randomised) ECDSA signature differs.
    assert assembled.tbs_certificate_bytes == direct.tbs_certificate_bytes
    assert tbs_certificate(builder()) == direct.tbs_certificate_bytes
    pai = pai_spec().build()
    assert check_dac(assembled, pai) == []
    assert check_dac(direct, pai) == []


async def test_file_key_signer_can_be_forced_through_the_assembly_path() -> None:
    cert = await sign_certificate(builder(), FileKeySigner(PAI_KEY), direct=False)
    assert check_dac(cert, pai_spec().build()) == []


async def test_assembled_certificate_passes_openssl(
    tmp_path: Path, dev_pki: DevPki, openssl: str
) -> None:
    signer = FileKeySigner.load(dev_pki.pai_key)
    pai = x509.load_pem_x509_certificate(dev_pki.pai_cert.read_bytes())
    ski = pai.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    key = ec.generate_private_key(ec.SECP256R1())
    b = (
        x509.CertificateBuilder()
        .issuer_name(pai.subject)
        .subject_name(name("openssl"))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(pai.not_valid_before_utc)
        .not_valid_after(datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC))
        .add_extension(x509.BasicConstraints(False, None), True)
        .add_extension(x509.AuthorityKeyIdentifier(ski.key_identifier, None, None), False)
    )
    cert = await sign_certificate(b, PlainSigner(signer.private_key))
    path = write(tmp_path / "dac.pem", cert.public_bytes(serialization.Encoding.PEM))
    result = openssl_verify(openssl, dev_pki.paa_cert, dev_pki.pai_cert, path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip().endswith(": OK")


async def test_signer_garbage_is_carried_but_fails_the_profile_check() -> None:
    class Broken(PlainSigner):
        async def sign(self, data: bytes) -> bytes:
            return b"\x30\x80"

    # The BIT STRING may hold anything; the profile check LocalIssuer runs must catch it.
    cert = await sign_certificate(builder(), Broken(PAI_KEY))
    assert cert.signature == b"\x30\x80"
    assert [v.rule for v in check_dac(cert, pai_spec().build())] == ["signature"]
