"""SPAKE2+ verifier against the Matter SDK test vector; the passcode generator never errs."""

from __future__ import annotations

import base64
from collections.abc import Iterator

import pytest
from hypothesis import given
from hypothesis import strategies as st

from linehost.onboarding.spake2p import (
    INVALID_PASSCODES,
    PASSCODE_MAX,
    VERIFIER_LEN,
    compute_verifier,
    generate_passcode,
    generate_salt,
    is_valid_passcode,
)

# connectedhomeip: passcode 20202021, salt "SPAKE2P Key Salt", 1000 iterations
# (src/protocols/secure_channel/tests and the examples' CHIP_DEVICE_CONFIG test verifier).
SDK_VERIFIER_B64 = (
    "uWFwqugDNGiEck/po7KHwwMwwqZgN10XuyBajPGuyzUEV/iree4lOrao5GuwnlQ65CJzbeUB49s31EH+NEkg0JVI5M"
    "GCQGMMT/SRPFNRODm3wH/MBiehuFc6FJ/NH6Rmzw=="
)
SDK_W0 = "B96170AAE803346884724FE9A3B287C30330C2A660375D17BB205A8CF1AECB35"
SDK_L = (
    "0457F8AB79EE253AB6A8E46BB09E543AE422736DE501E3DB37D441FE344920D09548E4C18240630C4FF4913C53"
    "513839B7C07FCC0627A1B8573A149FCD1FA466CF"
)


def test_verifier_matches_the_matter_sdk_test_vector() -> None:
    verifier = compute_verifier(20202021, b"SPAKE2P Key Salt", 1000)
    assert len(verifier) == VERIFIER_LEN
    assert verifier[:32].hex().upper() == SDK_W0
    assert verifier[32:].hex().upper() == SDK_L
    assert base64.b64encode(verifier).decode() == SDK_VERIFIER_B64


def test_verifier_depends_on_passcode_salt_and_iterations() -> None:
    base = compute_verifier(20202021, b"SPAKE2P Key Salt", 1000)
    assert compute_verifier(20202022, b"SPAKE2P Key Salt", 1000) != base
    assert compute_verifier(20202021, b"SPAKE2P Key Salz", 1000) != base
    assert compute_verifier(20202021, b"SPAKE2P Key Salt", 1001) != base


@pytest.mark.parametrize(
    ("salt", "iterations"),
    [(b"short", 1000), (b"x" * 33, 1000), (b"x" * 16, 999), (b"x" * 16, 100_001)],
)
def test_verifier_refuses_out_of_spec_parameters(salt: bytes, iterations: int) -> None:
    with pytest.raises(ValueError, match=r"salt|iterations"):
        compute_verifier(20202021, salt, iterations)


def test_every_forbidden_passcode_is_invalid() -> None:
    forbidden = {int(str(d) * 8) for d in range(10)} | {12345678, 87654321}
    assert forbidden == INVALID_PASSCODES
    for value in [*forbidden, -1, 100_000_000, 99_999_999, 2**27]:
        assert not is_valid_passcode(value)
    for value in (1, 20202021, 99_999_998, 12345679):
        assert is_valid_passcode(value)


def _scripted(draws: list[int]) -> Iterator[int]:
    yield from draws
    while True:  # then a value that is always valid
        yield 20202020


@given(st.lists(st.integers(0, PASSCODE_MAX - 1), max_size=20))
def test_generator_never_returns_an_invalid_passcode(draws: list[int]) -> None:
    """Whatever the random source yields, the generator returns the first valid candidate."""
    source = _scripted(draws)
    bounds: list[int] = []

    def randbelow(bound: int) -> int:
        bounds.append(bound)
        return next(source)

    passcode = generate_passcode(randbelow)
    assert is_valid_passcode(passcode)
    assert bounds
    assert set(bounds) == {PASSCODE_MAX}
    expected = next((d + 1 for d in draws if is_valid_passcode(d + 1)), 20202021)
    assert passcode == expected


@given(st.sampled_from(sorted(INVALID_PASSCODES - {0})))
def test_generator_draws_again_on_a_forbidden_value(forbidden: int) -> None:
    source = iter([forbidden - 1, 41])
    assert generate_passcode(lambda _bound: next(source)) == 42


def test_generator_uses_the_system_csprng_by_default() -> None:
    drawn = {generate_passcode() for _ in range(2000)}
    assert all(is_valid_passcode(p) for p in drawn)
    assert len(drawn) > 1990  # no small-range or constant generator


def test_salt_lengths() -> None:
    assert len(generate_salt()) == 32
    assert len(generate_salt(16)) == 16
    assert generate_salt() != generate_salt()
    with pytest.raises(ValueError, match="salt length"):
        generate_salt(15)
