"""QR code text and manual pairing codes against the Matter SDK's setup-payload test vectors."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from linehost.onboarding.setup_payload import (
    CommissioningFlow,
    Discovery,
    SetupPayload,
    base38_decode,
    base38_encode,
    parse_manual_code,
    parse_qr_code,
    verhoeff_check_digit,
    verhoeff_valid,
)
from linehost.onboarding.spake2p import is_valid_passcode


def test_qr_code_of_the_sdk_default_payload() -> None:
    # connectedhomeip src/setup_payload/tests: GetDefaultPayload() -> kDefaultPayloadQRCode
    payload = SetupPayload(
        vid=12, pid=1, discriminator=128, passcode=2048, discovery=Discovery.SOFT_AP
    )
    assert payload.qr_code() == "MT:M5L90MP500K64J00000"
    assert parse_qr_code("MT:M5L90MP500K64J00000") == payload


def test_qr_code_of_the_sdk_example_apps() -> None:
    # chip-all-clusters-app: VID FFF1 PID 8001, BLE, discriminator 3840, passcode 20202021
    app = SetupPayload(vid=0xFFF1, pid=0x8001, discriminator=3840, passcode=20202021)
    assert app.qr_code() == "MT:-24J042C00KA0648G00"
    assert app.manual_code() == "34970112332"
    assert SetupPayload(0xFFF1, 0x8001, 3840, 20202021, discovery=Discovery.SOFT_AP).qr_code() == (
        "MT:-24J0KE600KA0648G00"
    )


def test_base38_of_the_sdk_default_payload_bytes() -> None:
    # SetUpCodePairer test: base38Decode("M5L90MP500K64J00000") == 60 00 08 00 20 00 10 00 10 00 00
    assert base38_decode("M5L90MP500K64J00000").hex() == "6000080020001000100000"
    assert base38_encode(bytes.fromhex("6000080020001000100000")) == "M5L90MP500K64J00000"


# connectedhomeip TestQRCode.cpp TestBase38
BASE38_VECTORS = [
    (b"", ""),
    (bytes([10]), "A0"),
    (bytes([10, 10]), "OT10"),
    (bytes([10, 10, 10]), "-N.B0"),
    (bytes([46, 0, 0]), "81000"),
    (bytes([255]), "R6"),
    (bytes([255, 255]), "NE71"),
    (bytes([255, 255, 255]), "PLS18"),
    (b"Hello World!", "KKHF3W2S013OPM3EJX11"),
]


@pytest.mark.parametrize(("data", "text"), BASE38_VECTORS)
def test_base38_sdk_vectors(data: bytes, text: str) -> None:
    assert base38_encode(data) == text
    assert base38_decode(text) == data


@pytest.mark.parametrize("bad", ["S6", "OE71", "QLS18", "A", "ABC", "abcde", "0[", " 0", "M5L9_"])
def test_base38_rejects_bad_text(bad: str) -> None:
    with pytest.raises(ValueError, match="Base38"):
        base38_decode(bad)


def test_manual_codes_of_the_sdk_vectors() -> None:
    # connectedhomeip TestManualCode.cpp: passcode 12345679, discriminator 2560 (vectors there
    # omit the Verhoeff digit, which the test helper appends).
    short = SetupPayload(vid=0, pid=0, discriminator=2560, passcode=12345679)
    assert short.manual_code() == "2412950753" + verhoeff_check_digit("2412950753")
    assert short.manual_code() == "24129507533"
    custom = SetupPayload(
        vid=45367, pid=14526, discriminator=2560, passcode=12345679, flow=CommissioningFlow.CUSTOM
    )
    assert custom.manual_code() == "64129507534536714526" + verhoeff_check_digit(
        "64129507534536714526"
    )
    ones = SetupPayload(1, 1, 2560, 12345679, flow=CommissioningFlow.CUSTOM)
    assert ones.manual_code()[:20] == "64129507530000100001"


def test_verhoeff_known_values() -> None:
    assert verhoeff_check_digit("236") == "3"  # the textbook example
    assert verhoeff_valid("2363")
    assert not verhoeff_valid("2364")
    assert verhoeff_check_digit("12345") == "1"


def test_manual_code_decodes_back() -> None:
    decoded = parse_manual_code("3497-011-2332")
    assert (decoded.short_discriminator, decoded.passcode) == (0xF, 20202021)
    with pytest.raises(ValueError, match="check digit"):
        parse_manual_code("34970112333")
    with pytest.raises(ValueError, match="11 or 21"):
        parse_manual_code("3497011233")


def test_payload_refuses_invalid_values() -> None:
    with pytest.raises(ValueError, match="passcode"):
        SetupPayload(0xFFF1, 0x8000, 1, 12345678)
    with pytest.raises(ValueError, match="discriminator"):
        SetupPayload(0xFFF1, 0x8000, 4096, 20202021)


payloads = st.builds(
    SetupPayload,
    vid=st.integers(0, 0xFFFF),
    pid=st.integers(0, 0xFFFF),
    discriminator=st.integers(0, 4095),
    passcode=st.integers(1, 99_999_998).filter(is_valid_passcode),
    flow=st.sampled_from(list(CommissioningFlow)),
    discovery=st.sampled_from([Discovery.BLE, Discovery.SOFT_AP | Discovery.ON_NETWORK]),
)


@given(payloads)
def test_qr_and_manual_codes_round_trip(payload: SetupPayload) -> None:
    text = payload.qr_code()
    assert text.startswith("MT:")
    assert len(text) == 22
    assert parse_qr_code(text) == payload
    manual = payload.manual_code()
    assert len(manual) == (21 if payload.flow is CommissioningFlow.CUSTOM else 11)
    assert verhoeff_valid(manual)
    decoded = parse_manual_code(manual)
    assert decoded.passcode == payload.passcode
    assert decoded.short_discriminator == payload.discriminator >> 8
    if payload.flow is CommissioningFlow.CUSTOM:
        assert (decoded.vid, decoded.pid) == (payload.vid, payload.pid)
