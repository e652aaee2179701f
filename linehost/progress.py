"""Progress for long-running commands, on stderr.

A person at a terminal gets a live rich bar; a pipe, a log file or CI gets a plain line now and
then and one at the end, so a long import in a cron job still shows that it is moving.
"""

from __future__ import annotations

import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import contextmanager
from typing import Final, TextIO, TypeVar

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

T = TypeVar("T")
#: Redraws per second: cheap next to the work being shown.
REFRESH_PER_SECOND: Final = 4
#: Seconds between plain progress lines when stderr is not a terminal.
PLAIN_EVERY: Final = 5.0


def interactive(stream: TextIO | None = None) -> bool:
    """True when `stream` (default stderr) is a terminal."""
    return (stream or sys.stderr).isatty()


class Meter:
    """Counts one stage of work (`advance`) and shows it; `finish` prints the final count."""

    def __init__(
        self,
        description: str,
        total: int | None,
        *,
        bar: Progress | None,
        out: TextIO,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """Show on `bar` when given, otherwise as plain lines on `out`."""
        self.description = description
        self.total = total
        self.done = 0
        self._bar = bar
        self._task = bar.add_task(description, total=total) if bar is not None else None
        self._out = out
        self._clock = clock
        self._started = clock()
        self._last_line = self._started

    def advance(self, count: int = 1) -> None:
        """`count` more units done."""
        self.done += count
        if self._bar is not None and self._task is not None:
            self._bar.advance(self._task, count)
            return
        now = self._clock()
        if now - self._last_line >= PLAIN_EVERY:
            self._last_line = now
            self._line(now)

    def finish(self) -> None:
        """Say the final count (plain mode; the bar already shows it)."""
        if self._bar is None:
            self._line(self._clock())

    def _line(self, now: float) -> None:
        of = f" of {self.total}" if self.total is not None else ""
        print(
            f"{self.description}: {self.done}{of} ({now - self._started:.1f} s)",
            file=self._out,
            flush=True,
        )


@contextmanager
def progress_display(out: TextIO | None = None) -> Iterator[Callable[[str, int | None], Meter]]:
    """A factory of Meters sharing one display on `out` (default stderr)."""
    stream = out or sys.stderr
    if not interactive(stream):
        yield lambda description, total: Meter(description, total, bar=None, out=stream)
        return
    with Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=Console(file=stream),
        transient=False,
        refresh_per_second=REFRESH_PER_SECOND,
    ) as bar:
        yield lambda description, total: Meter(description, total, bar=bar, out=stream)


async def counting(rows: AsyncIterator[T], description: str) -> AsyncIterator[T]:
    """Pass `rows` through, counting them on stderr."""
    with progress_display() as meter_for:
        meter = meter_for(description, None)
        async for row in rows:
            yield row
            meter.advance()
        meter.finish()
