"""Passcodes at rest: sealed with AES-GCM, opened only with the same key and device."""

from __future__ import annotations

from pathlib import Path

import pytest

from linehost.errors import ConfigError
from linehost.onboarding.sealing import PasscodeSeal, SealError, generate_key_text


def test_seal_round_trip_and_no_plaintext() -> None:
    seal = PasscodeSeal(bytes(32))
    sealed = seal.seal(20202021, "UID1/FFF1/8000")
    assert "20202021" not in sealed
    assert sealed != seal.seal(20202021, "UID1/FFF1/8000")  # fresh nonce each time
    assert seal.open(sealed, "UID1/FFF1/8000", seal.key_id) == 20202021


def test_wrong_key_or_device_is_refused() -> None:
    seal, other = PasscodeSeal(bytes(32)), PasscodeSeal(b"\x01" * 32)
    sealed = seal.seal(12345679, "UID1/FFF1/8000")
    with pytest.raises(SealError, match="configured key"):
        other.open(sealed, "UID1/FFF1/8000", seal.key_id)
    with pytest.raises(SealError, match="wrong key or altered"):
        other.open(sealed, "UID1/FFF1/8000")
    with pytest.raises(SealError, match="wrong key or altered"):
        seal.open(sealed, "UID2/FFF1/8000")  # a row copied onto another device


def test_tag_is_keyed_and_per_product() -> None:
    seal = PasscodeSeal(bytes(32))
    assert seal.tag(20202021, "fff1", "8000") == seal.tag(20202021, "FFF1", "8000")
    assert seal.tag(20202021, "FFF1", "8000") != seal.tag(20202022, "FFF1", "8000")
    assert seal.tag(20202021, "FFF1", "8000") != seal.tag(20202021, "FFF1", "8001")
    assert seal.tag(20202021, "FFF1", "8000") != PasscodeSeal(b"\x02" * 32).tag(
        20202021, "FFF1", "8000"
    )


def test_key_from_file_and_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    text = generate_key_text()
    (tmp_path / "hex.key").write_text(text + "\n")
    (tmp_path / "raw.key").write_bytes(bytes.fromhex(text))
    monkeypatch.setenv("LINEHOST_PASSCODE_KEY", text)
    ids = {
        PasscodeSeal.from_file(tmp_path / "hex.key").key_id,
        PasscodeSeal.from_file(tmp_path / "raw.key").key_id,
        PasscodeSeal.from_env("LINEHOST_PASSCODE_KEY").key_id,
    }
    assert len(ids) == 1
    with pytest.raises(ConfigError, match="not set"):
        PasscodeSeal.from_env("LINEHOST_NO_SUCH_VARIABLE")
    with pytest.raises(ConfigError, match="cannot read"):
        PasscodeSeal.from_file(tmp_path / "missing.key")
    (tmp_path / "short.key").write_text("abcd")
    with pytest.raises(ConfigError, match="32 random bytes"):
        PasscodeSeal.from_file(tmp_path / "short.key")
