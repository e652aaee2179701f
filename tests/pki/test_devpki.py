"""Development PKI: what init_dev writes, that it conforms, and that it never overwrites."""

from __future__ import annotations

import stat
from datetime import UTC, datetime
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from linehost.errors import PkiError
from linehost.pki.devpki import DevPki, init_dev
from linehost.pki.matter import OID_MATTER_PID, OID_MATTER_VID
from linehost.pki.profile import check_paa, check_pai

from .builders import run_tool

FILES = ("paa.pem", "paa.key", "pai.pem", "pai.key", "README.txt")


def load(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def test_writes_a_conforming_paa_and_pai(tmp_path: Path, openssl: str) -> None:
    out = tmp_path / "a" / "pki"
    pki = init_dev(out, vid="fff2", pid="8001")
    assert pki == DevPki(out / "paa.pem", out / "paa.key", out / "pai.pem", out / "pai.key")
    assert sorted(p.name for p in out.iterdir()) == sorted(FILES)
    for key in (pki.paa_key, pki.pai_key):
        assert stat.S_IMODE(key.stat().st_mode) == 0o600
    readme = (out / "README.txt").read_text().lower()
    assert "development only" in readme
    assert "never for production" in readme

    paa, pai = load(pki.paa_cert), load(pki.pai_cert)
    now = datetime.now(UTC)
    assert check_paa(paa, now) == []
    assert check_pai(pai, paa, now) == []
    paa_cn = paa.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)[0].value
    assert str(paa_cn).startswith("linehost Dev PAA")
    assert paa.subject.get_attributes_for_oid(OID_MATTER_PID) == []
    assert pai.subject.get_attributes_for_oid(OID_MATTER_VID)[0].value == "FFF2"
    assert pai.subject.get_attributes_for_oid(OID_MATTER_PID)[0].value == "8001"
    assert pai.extensions.get_extension_for_class(x509.BasicConstraints).value.path_length == 0
    assert paa.extensions.get_extension_for_class(x509.BasicConstraints).value.path_length == 1
    assert pai.not_valid_after_utc.year == 9999

    for key_path, cert in ((pki.paa_key, paa), (pki.pai_key, pai)):
        private = serialization.load_pem_private_key(key_path.read_bytes(), None)
        assert isinstance(private, ec.EllipticCurvePrivateKey)
        assert private.public_key() == cert.public_key()

    result = run_tool(openssl, "verify", "-CAfile", pki.paa_cert, pki.pai_cert)
    assert result.returncode == 0, result.stdout + result.stderr


def test_refuses_to_overwrite_a_whole_pki(tmp_path: Path) -> None:
    pki = init_dev(tmp_path)
    before = {name: (tmp_path / name).read_bytes() for name in FILES}
    with pytest.raises(PkiError, match=rf"^{tmp_path / 'paa.pem'}: already exists; refusing"):
        init_dev(tmp_path)
    assert {name: (tmp_path / name).read_bytes() for name in FILES} == before
    assert pki.pai_key.read_bytes() == before["pai.key"]


@pytest.mark.parametrize("existing", FILES)
def test_refuses_when_any_one_file_exists_and_writes_nothing(tmp_path: Path, existing: str) -> None:
    (tmp_path / existing).write_text("mine\n")
    with pytest.raises(PkiError, match=rf"{existing}: already exists; refusing to overwrite$"):
        init_dev(tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == [existing]
    assert (tmp_path / existing).read_text() == "mine\n"


def test_refuses_a_dangling_symlink(tmp_path: Path) -> None:
    (tmp_path / "pai.key").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(PkiError, match=r"pai\.key: already exists"):
        init_dev(tmp_path)
    assert not (tmp_path / "elsewhere").exists()


def test_bad_vid_is_refused(tmp_path: Path) -> None:
    with pytest.raises(PkiError, match=r"^vid 'FFFG': not 4 hex digits$"):
        init_dev(tmp_path, vid="FFFG")
    assert list(tmp_path.iterdir()) == []


def test_two_dev_pkis_are_distinct(tmp_path: Path) -> None:
    a, b = init_dev(tmp_path / "a"), init_dev(tmp_path / "b")
    assert a.pai_key.read_bytes() != b.pai_key.read_bytes()
    assert load(a.paa_cert).public_key() != load(b.paa_cert).public_key()
