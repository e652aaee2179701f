"""The DAC template gives byte for byte the TBSCertificate cryptography's builder gives."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from linehost.errors import IssuerError
from linehost.pki import local as local_module
from linehost.pki.csr import parse_csr
from linehost.pki.dac_template import BuilderFactory, DacTemplate, matches_builder
from linehost.pki.devpki import DevPki
from linehost.pki.local import NO_EXPIRY, LocalIssuer
from linehost.pki.profile import check_dac
from linehost.pki.signer import FileKeySigner, tbs_certificate

from .builders import make_csr, openssl_verify, write

KEYS = [ec.generate_private_key(ec.SECP256R1()).public_key() for _ in range(8)]
common_names = st.one_of(
    st.text("0123456789ABCDEF", min_size=16, max_size=16),  # the default: the UID
    st.text(
        st.characters(codec="utf-8", exclude_categories=["Cs"]), min_size=1, max_size=64
    ).filter(lambda cn: len(cn.encode()) <= 64),  # ub-common-name, in UTF-8 bytes
)
moments = st.datetimes(
    min_value=datetime(1990, 1, 1), max_value=datetime(9999, 1, 1), timezones=st.just(UTC)
).map(lambda m: m.replace(microsecond=0))


def factory_for(issuer: LocalIssuer) -> BuilderFactory:
    return issuer._builder_for


@settings(max_examples=300, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    serial=st.integers(min_value=1, max_value=2**159 - 1),
    not_before=moments,
    cn=common_names,
    key=st.sampled_from(KEYS),
)
def test_template_equals_builder(
    dev_pki: DevPki, serial: int, not_before: datetime, cn: str, key: ec.EllipticCurvePublicKey
) -> None:
    issuer = LocalIssuer.load(dev_pki.pai_cert, FileKeySigner.load(dev_pki.pai_key), "FFF1", "8000")
    template = issuer._template
    assert template is not None, "the start-up self-check turned the template off"
    spki = key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    built = tbs_certificate(factory_for(issuer)(serial, not_before, cn, key))
    assert template.tbs(serial=serial, not_before=not_before, cn=cn, spki=spki) == built


def test_template_refuses_a_key_that_is_not_uncompressed_p256(dev_pki: DevPki) -> None:
    issuer = LocalIssuer.load(dev_pki.pai_cert, FileKeySigner.load(dev_pki.pai_key), "FFF1", "8000")
    assert issuer._template is not None
    p384 = ec.generate_private_key(ec.SECP384R1()).public_key()
    spki = p384.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    with pytest.raises(ValueError, match="not an uncompressed EC P-256"):
        issuer._template.tbs(serial=1, not_before=datetime.now(UTC), cn="x", spki=spki)


def test_a_template_that_differs_is_not_used(dev_pki: DevPki) -> None:
    issuer = LocalIssuer.load(dev_pki.pai_cert, FileKeySigner.load(dev_pki.pai_key), "FFF1", "8000")
    assert issuer._template is not None
    assert matches_builder(issuer._template, factory_for(issuer))
    # a template made for another issuer (other notAfter) differs from this issuer's builder
    other = BuilderFactory(
        issuer._issuer_name,
        datetime(2040, 1, 1, tzinfo=UTC),
        [],
        issuer._fixed_extensions,
        issuer._akid,
    )
    stray = DacTemplate(other(1, datetime(2030, 1, 1, tzinfo=UTC), "0", KEYS[0]))
    assert not matches_builder(stray, factory_for(issuer))


async def test_issuer_falls_back_to_the_builder_when_the_self_check_fails(
    dev_pki: DevPki, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(local_module, "matches_builder", lambda *_: False)
    issuer = LocalIssuer.load(dev_pki.pai_cert, FileKeySigner.load(dev_pki.pai_key), "FFF1", "8000")
    assert issuer._template is None
    dac = await issuer.issue("0123456789ABCDEF", parse_csr(make_csr()))
    pai = x509.load_pem_x509_certificate(dev_pki.pai_cert.read_bytes())
    assert check_dac(x509.load_der_x509_certificate(dac.der), pai) == []


async def test_template_dacs_pass_the_checker_and_openssl(
    dev_pki: DevPki, tmp_path: Path, openssl: str
) -> None:
    issuer = LocalIssuer.load(
        dev_pki.pai_cert,
        FileKeySigner.load(dev_pki.pai_key),
        "FFF1",
        "8000",
        backdate=timedelta(hours=1),
        paa_cert=dev_pki.paa_cert,
    )
    assert issuer._template is not None
    pai = x509.load_pem_x509_certificate(dev_pki.pai_cert.read_bytes())
    for n in range(20):
        dac = await issuer.issue(f"{n:016X}", parse_csr(make_csr()))
        cert = x509.load_der_x509_certificate(dac.der)
        assert check_dac(cert, pai) == []  # with the signature verified, too
        assert cert.not_valid_after_utc == NO_EXPIRY
        assert dac.pem == cert.public_bytes(serialization.Encoding.PEM).decode()
        path = write(tmp_path / f"dac{n}.pem", dac.pem)
        verify = openssl_verify(openssl, dev_pki.paa_cert, dev_pki.pai_cert, path)
        assert verify.returncode == 0, verify.stdout + verify.stderr


async def test_csr_key_that_is_not_p256_is_an_issuer_error(issuer: LocalIssuer) -> None:
    info = parse_csr(make_csr())
    bad = type(info)(info.public_key_der[:-1], info.public_key_sha256, info.csr_der)
    with pytest.raises(IssuerError, match="not an uncompressed EC P-256 key"):
        await issuer.issue("0123456789ABCDEF", bad)
