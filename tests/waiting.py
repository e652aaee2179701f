"""`eventually()`: the one way a test waits for something to become true.

Poll a predicate until it is truthy or `within` seconds pass, then fail naming `what` (a
string, or a callable for a late description such as the last log lines). The blocking variant
is for tests that drive subprocesses or threads from synchronous code.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

Description = str | Callable[[], str]


async def eventually(
    predicate: Callable[[], object],
    *,
    within: float = 10.0,
    what: Description = "the condition",
    every: float = 0.02,
) -> None:
    """Await until `predicate()` is truthy; AssertionError naming `what` after `within` s."""
    deadline = time.monotonic() + within
    while not predicate():
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {within:g} s waiting for {_say(what)}")
        await asyncio.sleep(every)


def eventually_blocking(
    predicate: Callable[[], object],
    *,
    within: float = 10.0,
    what: Description = "the condition",
    every: float = 0.05,
) -> None:
    """`eventually` for synchronous tests (subprocesses, threads): sleeps between polls."""
    deadline = time.monotonic() + within
    while not predicate():
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {within:g} s waiting for {_say(what)}")
        time.sleep(every)


def _say(what: Description) -> str:
    return what() if callable(what) else what
