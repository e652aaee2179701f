"""Serial templates and the discriminator policies as pure functions."""

from __future__ import annotations

import random
from datetime import UTC, datetime

import pytest

from linehost.store.allocation import (
    AllocationError,
    DiscriminatorWindow,
    render_serial,
    sequential_discriminator,
)

NOW = datetime(2026, 11, 22, 5, 0, tzinfo=UTC)


def _render(template: str, seq: int = 42, uid: str = "00AB") -> str:
    return render_serial(
        template, seq=seq, uid=uid, line="line-1", station="st1", jig="j1", vid="FFF1",
        pid="8000", now=NOW,
    )  # fmt: skip


def test_serial_templates() -> None:
    assert _render("{line}-{yyyymmdd}-{seq:06d}") == "line-1-20261122-000042"
    assert _render("{line}-{seq:06d}") == "line-1-000042"
    assert _render("SN{uid}") == "SN00AB"
    assert _render("{vid}{pid}-{station}-{jig}-{seq}") == "FFF18000-st1-j1-42"


def test_serial_longer_than_32_characters_is_refused() -> None:
    with pytest.raises(AllocationError, match=r"1\.\.32 characters"):
        _render("{uid}", uid="AB" * 17)


def test_sequential_policy_wraps_at_4096() -> None:
    assert [sequential_discriminator(s) for s in (0, 1, 4095, 4096, 4097)] == [0, 1, 4095, 0, 1]


def test_random_policy_never_repeats_inside_the_window() -> None:
    rng = random.Random(7)
    window = DiscriminatorWindow(randbelow=rng.randrange)
    drawn: list[int] = []
    for _ in range(3 * 4096):
        value = window.draw()
        assert value not in window
        window.push(value)
        drawn.append(value)
    for i in range(len(drawn) - 4095):
        assert len(set(drawn[i : i + 4096])) == 4096


def test_random_window_starts_from_recorded_devices() -> None:
    recent = list(range(4095))  # newest first: every value but 4095 is taken
    window = DiscriminatorWindow(recent, randbelow=random.Random(1).randrange)
    assert window.draw() == 4095
