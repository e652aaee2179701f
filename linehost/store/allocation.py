"""Allocation rules as pure functions: serial numbers, discriminator policies."""

from __future__ import annotations

import secrets
from collections import Counter, deque
from collections.abc import Callable, Iterable
from datetime import datetime
from typing import Final

DISCRIMINATORS: Final = 4096  # 12 bits
#: Devices of one VID/PID among which the random policy never repeats a discriminator.
RANDOM_WINDOW: Final = 4096
SERIAL_MAX_LEN: Final = 32
#: Random draws before the random policy lists the free values instead.
_QUICK_DRAWS: Final = 16


class AllocationError(ValueError):
    """A configured rule cannot produce a valid value for this device (message for a person)."""


def render_serial(
    template: str,
    *,
    seq: int,
    uid: str,
    line: str,
    station: str,
    jig: str,
    vid: str,
    pid: str,
    now: datetime,
) -> str:
    """The serial number from `serial_template`: printable ASCII, 1..32 characters."""
    try:
        serial = template.format(
            seq=seq,
            uid=uid,
            line=line,
            station=station,
            jig=jig,
            vid=vid,
            pid=pid,
            yyyymmdd=now.strftime("%Y%m%d"),
            yyyy=now.strftime("%Y"),
            mm=now.strftime("%m"),
            dd=now.strftime("%d"),
        )
    except (KeyError, IndexError, ValueError) as exc:
        raise AllocationError(f"serial_template {template!r} cannot be rendered: {exc}") from None
    if not serial or len(serial) > SERIAL_MAX_LEN:
        raise AllocationError(
            f"serial number {serial!r} must have 1..{SERIAL_MAX_LEN} characters "
            f"(serial_template {template!r})"
        )
    if not all(" " <= c <= "~" for c in serial) or serial != serial.strip():
        raise AllocationError(f"serial number {serial!r} must be printable ASCII")
    return serial


def sequential_discriminator(seq: int) -> int:
    """The `sequential` policy: the per-VID/PID sequence, wrapping 0..4095."""
    return seq % DISCRIMINATORS


class DiscriminatorWindow:
    """The `random` policy: a random discriminator not used by the previous 4095 devices."""

    def __init__(
        self,
        recent: Iterable[int] = (),
        *,
        size: int = RANDOM_WINDOW,
        randbelow: Callable[[int], int] = secrets.randbelow,
    ) -> None:
        """`recent`: discriminators of earlier devices, newest first."""
        if not 1 <= size <= DISCRIMINATORS:
            raise ValueError(f"window must be 1..{DISCRIMINATORS} devices")
        self._kept: deque[int] = deque(maxlen=size - 1)
        self._counts: Counter[int] = Counter()
        self._randbelow = randbelow
        newest_first = list(recent)[: size - 1]
        for value in reversed(newest_first):
            self.push(value)

    def draw(self) -> int:
        """A uniformly random discriminator outside the window (there is always one)."""
        for _ in range(_QUICK_DRAWS):
            value = self._randbelow(DISCRIMINATORS)
            if not self._counts[value]:
                return value
        free = [v for v in range(DISCRIMINATORS) if not self._counts[v]]
        return free[self._randbelow(len(free))]

    def push(self, value: int) -> None:
        """Record the discriminator of a new device (the oldest leaves the window)."""
        if self._kept.maxlen == 0:
            return
        if len(self._kept) == self._kept.maxlen:
            old = self._kept.popleft()
            self._counts[old] -= 1
        self._kept.append(value)
        self._counts[value] += 1

    def __contains__(self, value: object) -> bool:
        return isinstance(value, int) and self._counts[value] > 0
