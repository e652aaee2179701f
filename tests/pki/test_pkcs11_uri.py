"""Pkcs11Signer parts that need no HSM: RFC 7512 URI parsing, a module that will not load."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("pkcs11", reason="python-pkcs11 (the hsm extra) is not installed")

from linehost.errors import PkiError
from linehost.pki.pkcs11 import Pkcs11Signer, Pkcs11Uri, parse_pkcs11_uri


@pytest.mark.parametrize(
    ("uri", "expected"),
    [
        ("pkcs11:token=line%201;object=pai", Pkcs11Uri(token="line 1", object="pai")),
        ("pkcs11:token=t;id=%01%a0", Pkcs11Uri(token="t", id=b"\x01\xa0")),
        (
            "pkcs11:model=SoftHSM%20v2;manufacturer=SoftHSM%20project;serial=abc;object=k;type=private",
            Pkcs11Uri(model="SoftHSM v2", manufacturer="SoftHSM project", serial="abc", object="k"),
        ),
        ("pkcs11:object=pai;", Pkcs11Uri(object="pai")),
    ],
)
def test_good_uris(uri: str, expected: Pkcs11Uri) -> None:
    assert parse_pkcs11_uri(uri) == expected


@pytest.mark.parametrize(
    ("uri", "message"),
    [
        ("file:pai.key", r"must start with 'pkcs11:'"),
        ("pkcs11:token=t;object=k;pin-value=1234", r"pin-value is not allowed"),
        ("pkcs11:token=t;object=k?pin-value=1234", r"pin-value is not allowed"),
        ("pkcs11:token=t;object=k?pin-source=file:/pin", r"pin-source is not allowed"),
        ("pkcs11:token=t;object=k?module-path=/x.so", r"unsupported query attribute 'module-path'"),
        ("pkcs11:token=t;slot-id=1;object=k", r"unsupported attribute 'slot-id'"),
        ("pkcs11:token=t;object=a;object=b", r"attribute 'object' given twice"),
        ("pkcs11:token=t;id=%01;id=%02", r"attribute 'id' given twice"),
        ("pkcs11:token=%ff;object=k", r"attribute 'token' is not UTF-8"),
        ("pkcs11:token=t;object", r"attribute 'object' has no value"),
        ("pkcs11:token=t;object=k;type=cert", r"type=cert is not a private key"),
        ("pkcs11:token=t", r"needs object= or id="),
    ],
)
def test_bad_uris(uri: str, message: str) -> None:
    with pytest.raises(PkiError, match=message) as info:
        parse_pkcs11_uri(uri)
    assert "1234" not in str(info.value)  # a PIN in the URI is never echoed


def test_missing_module_is_a_pki_error(tmp_path: Path) -> None:
    missing = tmp_path / "nope.so"
    with pytest.raises(PkiError, match=rf"^PKCS#11 module {missing}: cannot load"):
        Pkcs11Signer.open("pkcs11:token=x;object=y", str(missing), "1234")
