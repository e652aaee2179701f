"""Progress for long-running commands, on stderr and only for a person at a terminal."""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from typing import Final, TypeVar

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


def interactive() -> bool:
    """True when stderr is a terminal (pipes, logs and CI get no progress bars)."""
    return sys.stderr.isatty()


@contextmanager
def progress_bar(description: str, total: int | None) -> Iterator[Progress | None]:
    """A rich progress bar on stderr (None when stderr is not a terminal); `advance` it."""
    if not interactive():
        yield None
        return
    columns = [SpinnerColumn(), TextColumn("{task.description}"), BarColumn(),
               MofNCompleteColumn(), TimeElapsedColumn()]  # fmt: skip
    if total is not None:
        columns.append(TimeRemainingColumn())
    with Progress(
        *columns,
        console=Console(stderr=True),
        transient=True,
        refresh_per_second=REFRESH_PER_SECOND,
    ) as bar:
        bar.add_task(description, total=total)
        yield bar


async def counting(rows: AsyncIterator[T], description: str) -> AsyncIterator[T]:
    """Pass `rows` through, counting them on a live line on stderr (when interactive)."""
    with progress_bar(description, None) as bar:
        async for row in rows:
            yield row
            if bar is not None:
                bar.advance(bar.task_ids[0])
