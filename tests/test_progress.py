"""The plain (non-terminal) progress meter: throttled lines, always a final count."""

from __future__ import annotations

import io

from linehost.progress import PLAIN_EVERY, Meter, progress_display


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_plain_meter_prints_at_most_every_interval_and_at_the_end() -> None:
    out, clock = io.StringIO(), FakeClock()
    meter = Meter("checking DACs", 1000, bar=None, out=out, clock=clock)
    for _ in range(400):  # all within the first interval: silent
        meter.advance()
    assert out.getvalue() == ""
    clock.now += PLAIN_EVERY
    meter.advance()
    clock.now += 1.0
    meter.advance(599)  # too soon after the last line
    meter.finish()
    assert out.getvalue().splitlines() == [
        f"checking DACs: 401 of 1000 ({PLAIN_EVERY:.1f} s)",
        f"checking DACs: 1000 of 1000 ({PLAIN_EVERY + 1:.1f} s)",
    ]


def test_plain_meter_without_a_total_counts_only() -> None:
    out = io.StringIO()
    with progress_display(out) as meter_for:  # a StringIO is not a terminal
        meter = meter_for("exporting records", None)
        meter.advance(3)
        meter.finish()
    assert out.getvalue().startswith("exporting records: 3 (")
