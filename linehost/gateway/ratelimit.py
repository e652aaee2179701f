"""Token buckets per client: pure, on an injected clock (monotonic seconds)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(slots=True)
class TokenBucket:
    """`rate` tokens a second, at most `burst` saved up; one token per DAC request."""

    rate: float
    burst: int
    tokens: float
    stamp: float

    @classmethod
    def full(cls, rate: float, burst: int, now: float) -> TokenBucket:
        """A bucket that may spend `burst` tokens at once from `now`."""
        return cls(rate, burst, float(burst), now)

    def take(self, now: float) -> float:
        """Spend one token and return 0.0, or spend nothing and return the seconds until one."""
        self.tokens = min(float(self.burst), self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return 0.0
        return (1.0 - self.tokens) / self.rate


class RateLimiter:
    """One TokenBucket per client; a change of rate or burst starts that client afresh."""

    def __init__(self) -> None:
        """No client has spent anything yet."""
        self._buckets: dict[str, TokenBucket] = {}

    def take(self, client: str, rate: float, burst: int, now: float) -> float:
        """0.0 when `client` may go ahead now, else the seconds to wait (Retry-After)."""
        bucket = self._buckets.get(client)
        if bucket is None or bucket.rate != rate or bucket.burst != burst:
            bucket = self._buckets[client] = TokenBucket.full(rate, burst, now)
        return bucket.take(now)
