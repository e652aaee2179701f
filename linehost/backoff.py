"""Capped exponential backoff with jitter: the one retry pacing of ports, brokers and databases."""

from __future__ import annotations

import random
from dataclasses import dataclass, field


@dataclass(slots=True)
class Backoff:
    """Delays that double from `low` to `high`, each +-`jitter`; `reset()` after a success.

    The jitter keeps a line of unplugged jigs (or of hosts after a broker restart) from retrying
    in lockstep.
    """

    low: float
    high: float
    jitter: float = 0.0
    rng: random.Random = field(default_factory=random.Random)
    _next: float = 0.0

    def next_delay(self) -> float:
        """The delay before the next try; grows until `high`."""
        base = self._next or self.low
        self._next = min(self.high, base * 2)
        return base * (1 + self.rng.uniform(-self.jitter, self.jitter))

    def reset(self) -> None:
        """Start again from the shortest delay."""
        self._next = 0.0
