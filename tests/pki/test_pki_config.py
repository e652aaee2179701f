"""`[pki]` key sources: PKCS#11 module and PIN source, never a PIN in the TOML; bundle issuer
without a key; CD, notAfter and backdate options."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from linehost.config import load_config
from linehost.errors import ConfigError

BASE = """
[line]
name = "l1"
[pki]
pai_cert = "pki/pai.pem"
vid = "FFF1"
pid = "8000"
{pki}
"""
HSM = (
    'pai_key = "pkcs11:token=line;object=pai"\npkcs11_module = "/usr/lib/softhsm/libsofthsm2.so"\n'
)


def test_pkcs11_key_with_pin_file_resolves_relative_paths(tmp_path: Path) -> None:
    (tmp_path / "pin.txt").write_text("s3cret-pin\n")
    config = load_config(_write(tmp_path, HSM + 'pkcs11_pin_file = "pin.txt"\ncd_file = "cd.der"'))
    assert config.pki.pai_key == "pkcs11:token=line;object=pai"
    assert config.pki.pkcs11_pin_file == tmp_path / "pin.txt"
    assert config.pki.cd_file == tmp_path / "cd.der"
    assert config.pki.pin() == "s3cret-pin"


def test_pin_from_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = load_config(_write(tmp_path, HSM + 'pkcs11_pin_env = "MY_PIN"'))
    monkeypatch.delenv("MY_PIN", raising=False)
    with pytest.raises(ConfigError, match="environment variable MY_PIN is not set"):
        config.pki.pin()
    monkeypatch.setenv("MY_PIN", "from-env")
    assert config.pki.pin() == "from-env"


@pytest.mark.parametrize(
    ("pki", "message"),
    [
        (HSM, "needs pkcs11_pin_env or pkcs11_pin_file"),
        ('pai_key = "pkcs11:token=t;object=o"\npkcs11_pin_env = "P"', "needs pkcs11_module"),
        (HSM + 'pkcs11_pin = "1234"', "pki.pkcs11_pin: unknown key"),
        (HSM + 'pkcs11_pin_env = "A"\npkcs11_pin_file = "b"', "not both"),
        ("", "pai_key is required when issuer = 'local'"),
        ('issuer = "hsm"\npai_key = "k"', "pki.issuer"),
        ('pai_key = "k"\nbackdate = -5', "pki.backdate"),
    ],
)
def test_bad_key_sources_are_named(tmp_path: Path, pki: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(_write(tmp_path, pki))


def test_bundle_issuer_needs_no_key_and_options_parse(tmp_path: Path) -> None:
    config = load_config(
        _write(
            tmp_path,
            'issuer = "bundle"\nnot_after = 2040-01-01T00:00:00Z\nbackdate = 3600',
        )
    )
    assert config.pki.issuer == "bundle"
    assert config.pki.pai_key is None
    assert config.pki.not_after == datetime(2040, 1, 1, tzinfo=UTC)
    assert config.pki.backdate == timedelta(hours=1)


def test_pin_file_errors_do_not_show_its_content(tmp_path: Path) -> None:
    config = load_config(_write(tmp_path, HSM + 'pkcs11_pin_file = "missing.txt"'))
    with pytest.raises(ConfigError, match=r"cannot read .*missing\.txt"):
        config.pki.pin()


def _write(tmp_path: Path, pki: str) -> Path:
    path = tmp_path / "line.toml"
    path.write_text(BASE.format(pki=pki))
    return path
