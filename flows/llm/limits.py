"""In-process rate limits: requests and tokens per minute as token buckets (asyncio, no Prefect)."""

from __future__ import annotations

import asyncio
import time


class TokenBucket:
    """Holds up to `per_minute` units, refilled continuously; `take` waits until enough are there."""

    def __init__(self, per_minute: float) -> None:
        self.capacity = float(per_minute)
        self.rate = per_minute / 60.0
        self.level = self.capacity
        self.stamp = time.monotonic()
        self._lock = asyncio.Lock()

    def _refill(self) -> None:
        now = time.monotonic()
        self.level = min(self.capacity, self.level + (now - self.stamp) * self.rate)
        self.stamp = now

    async def take(self, amount: float) -> None:
        amount = min(amount, self.capacity)  # one oversized request must still be able to go
        async with self._lock:  # FIFO: waiters are served in order
            self._refill()
            while self.level < amount:
                await asyncio.sleep((amount - self.level) / self.rate)
                self._refill()
            self.level -= amount

    def give_back(self, amount: float) -> None:
        """Return an over-estimate once the real token count is known (may go negative: debt)."""
        self._refill()
        self.level = min(self.capacity, self.level + amount)


class RateLimiter:
    def __init__(self, rpm: int | None, tpm: int | None) -> None:
        self.requests = TokenBucket(rpm) if rpm else None
        self.tokens = TokenBucket(tpm) if tpm else None

    @property
    def active(self) -> bool:
        """Any limit set: without one a call skips the limiter (no await, no bookkeeping)."""
        return self.requests is not None or self.tokens is not None

    async def acquire(self, estimated_tokens: int) -> None:
        if self.requests:
            await self.requests.take(1)
        if self.tokens:
            await self.tokens.take(estimated_tokens)

    def settle(self, estimated_tokens: int, actual_tokens: int) -> None:
        if self.tokens:
            self.tokens.give_back(estimated_tokens - actual_tokens)
