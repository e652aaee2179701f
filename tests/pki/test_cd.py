"""The Certification Declaration: init-dev's test CD parses (and openssl verifies it); broken
files are refused with a message naming what is wrong."""

from __future__ import annotations

import base64
import re
from pathlib import Path

import pytest

from linehost.errors import PkiError
from linehost.pki import der
from linehost.pki.cd import MAX_CD_BYTES, OID_DATA_DER, certified_products, load_cd, parse_cd
from linehost.pki.devpki import DevPki, init_dev

from .builders import run_tool


@pytest.fixture(scope="module")
def with_cd(tmp_path_factory: pytest.TempPathFactory) -> DevPki:
    return init_dev(tmp_path_factory.mktemp("cd") / "pki", vid="FFF1", pid="8000", cd=True)


def test_dev_cd_is_cms_signed_data_that_openssl_verifies(with_cd: DevPki, openssl: str) -> None:
    assert with_cd.cd is not None
    assert with_cd.cd_signer is not None
    cd = load_cd(with_cd.cd)
    assert cd.signers == 1
    # Matter TLV: anonymous structure, format_version 1, vendor_id FFF1, product 8000
    assert cd.content.startswith(bytes.fromhex("152400012501f1ff360205008018"))
    assert len("CD:" + cd.b64) <= 1024
    assert base64.b64decode(cd.b64) == with_cd.cd.read_bytes()
    result = run_tool(
        openssl, "cms", "-verify", "-inform", "DER", "-in", with_cd.cd, "-binary", "-noverify",
        "-certfile", with_cd.cd_signer, "-out", "/dev/null",
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    readme = (with_cd.cd.parent / "README.txt").read_text()
    assert "TEST Certification Declaration" in readme


def test_init_dev_refuses_to_overwrite_a_cd(tmp_path: Path) -> None:
    (tmp_path / "cd.der").write_bytes(b"mine")
    with pytest.raises(PkiError, match=r"cd\.der: already exists; refusing to overwrite$"):
        init_dev(tmp_path, cd=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cd.der"]


def _content_info(
    signed_data: bytes, oid: bytes = bytes.fromhex("06092a864886f70d010702")
) -> bytes:
    return der.sequence(oid, der.tlv(0xA0, signed_data))


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"-----BEGIN CMS-----\n", "not DER"),
        (b"", "not DER"),
        (b"\x30\x03\x02\x01", "not a well-formed DER CMS message"),
        (_content_info(der.sequence(der.integer(3)), OID_DATA_DER), "not CMS SignedData"),
        (_content_info(der.sequence(der.integer(3))), "lacks version / digestAlgorithms"),
        (
            _content_info(
                der.sequence(
                    der.integer(3),
                    der.tlv(0x31, b""),
                    der.sequence(OID_DATA_DER),
                    der.tlv(0x31, b""),
                )
            ),
            "carries no content (detached CD)",
        ),
        (
            _content_info(
                der.sequence(
                    der.integer(3),
                    der.tlv(0x31, b""),
                    der.sequence(OID_DATA_DER, der.tlv(0xA0, der.tlv(0x04, b"\x15\x18"))),
                    der.tlv(0x31, b""),
                )
            ),
            "SignedData has no signer",
        ),
        (b"\x30" + der.encode_length(MAX_CD_BYTES + 1) + b"\x00" * (MAX_CD_BYTES + 1), "too large"),
    ],
    ids=[
        "pem",
        "empty",
        "truncated",
        "not-signed-data",
        "no-digests",
        "detached",
        "no-signer",
        "too-large",
    ],
)
def test_broken_cds_are_refused(data: bytes, message: str) -> None:
    with pytest.raises(PkiError, match=re.escape(message)):
        parse_cd(data)


def test_unreadable_cd_names_the_file(tmp_path: Path) -> None:
    with pytest.raises(PkiError, match=rf"^CD file {tmp_path / 'nope.der'}: unreadable"):
        load_cd(tmp_path / "nope.der")
    bad = tmp_path / "bad.der"
    bad.write_bytes(b"\x30\x00")
    with pytest.raises(PkiError, match=rf"^CD file {bad}: "):
        load_cd(bad)


def test_products_of_a_test_cd(tmp_path: Path) -> None:
    pki = init_dev(tmp_path / "pki", "FFF2", "8001", cd=True)
    assert pki.cd is not None
    assert load_cd(pki.cd).products() == (0xFFF2, frozenset({0x8001}))


def test_products_of_several_pids_and_long_tags() -> None:
    # vendor_id 0x1234 as a 2-byte uint, product_id_array [1, 0x10000], a string and a
    # fully-qualified 8-byte tag skipped on the way.
    content = (
        b"\x15\x25\x01\x34\x12\x36\x02\x04\x01\x06\x00\x00\x01\x00\x18"
        b"\x2c\x04\x03abc\xe4\x01\x02\x03\x04\x05\x06\x07\x08\x01\x18"
    )
    assert certified_products(content) == (0x1234, frozenset({1, 0x10000}))


@pytest.mark.parametrize(
    "content",
    [
        b"\x15\x25\x01\x34\x12",  # the structure is not closed
        b"\x15\x2c\x04\x09abc\x18",  # a string runs past the end
        b"\x15\x25\x01\x34\x12\x18",  # no product_id_array
        b"\x15\x1f\x18",  # an unknown element type
        b"\x15\x26\x01\x34\x12",  # a 4-byte vendor_id cut short
    ],
)
def test_products_of_malformed_elements_raise(content: bytes) -> None:
    with pytest.raises(PkiError):
        certified_products(content)
