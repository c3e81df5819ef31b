"""A token bucket shared by every stream of a transfer (``--limit-rate``)."""

from __future__ import annotations

import asyncio
import threading
import time


class RateLimiter:
    """At most ``rate`` bytes per second across all callers, threads and tasks alike."""

    def __init__(self, rate: int, burst: float = 0.25) -> None:
        if rate <= 0:
            raise ValueError("rate must be positive")
        self.rate = rate
        self.capacity = max(1.0, rate * burst)
        self._tokens = self.capacity
        self._stamp = time.monotonic()
        self._lock = threading.Lock()

    def _reserve(self, count: int) -> float:
        """Take ``count`` tokens (going into debt); return how long to wait for them."""
        with self._lock:
            now = time.monotonic()
            self._tokens = min(self.capacity, self._tokens + (now - self._stamp) * self.rate)
            self._stamp = now
            self._tokens -= count
            return max(0.0, -self._tokens / self.rate)

    def consume(self, count: int) -> None:
        """Blocking: for threads."""
        wait = self._reserve(count)
        if wait:
            time.sleep(wait)

    async def aconsume(self, count: int) -> None:
        wait = self._reserve(count)
        if wait:
            await asyncio.sleep(wait)
