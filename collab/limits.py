"""Rate limiting without I/O: a token bucket per connection."""

from __future__ import annotations

__all__ = ["TokenBucket"]


class TokenBucket:
    """Allows `rate` events per second on average, and bursts of up to `capacity`."""

    __slots__ = ("capacity", "rate", "stamp", "tokens")

    def __init__(self, rate: float, capacity: float, now: float) -> None:
        self.rate = rate
        self.capacity = capacity
        self.tokens = capacity
        self.stamp = now

    def take(self, count: int, now: float) -> bool:
        """Spend `count` tokens if there are enough; False (and nothing spent) if not."""
        self.tokens = min(self.capacity, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens < count:
            return False
        self.tokens -= count
        return True
