"""Per-DCR throttling: token buckets for requests and bytes per minute, answering 429 with Retry-After."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

from workspace.errors import ApiError

DEFAULT_REQUESTS_PER_MINUTE = 12_000
DEFAULT_BYTES_PER_MINUTE = 2 * 1024**3


class TokenBucket:
    """Holds up to ``capacity`` tokens and refills ``rate`` per second."""

    def __init__(self, rate: float, capacity: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate = rate
        self.capacity = capacity
        self.tokens = capacity
        self.clock = clock
        self.stamp = clock()

    def _refill(self) -> None:
        now = self.clock()
        self.tokens = min(self.capacity, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now

    def wait_time(self, amount: float) -> float:
        """Seconds until ``amount`` tokens are there (0 = now). Does not take them."""
        self._refill()
        if self.tokens >= amount:
            return 0.0
        return (min(amount, self.capacity) - self.tokens) / self.rate

    def take(self, amount: float) -> None:
        self.tokens -= amount


@dataclass(frozen=True)
class Limits:
    requests_per_minute: float = DEFAULT_REQUESTS_PER_MINUTE
    bytes_per_minute: float = DEFAULT_BYTES_PER_MINUTE
    # Bucket size as seconds of allowance: 60 lets a whole minute's quota arrive in a burst.
    burst_seconds: float = 60.0


class DcrLimiter:
    """One pair of buckets per DCR immutable id."""

    def __init__(self, limits: Limits, clock: Callable[[], float] = time.monotonic) -> None:
        self.limits = limits
        self.clock = clock
        self._buckets: dict[str, tuple[TokenBucket, TokenBucket]] = {}

    def configure(self, limits: Limits) -> None:
        self.limits = limits
        self._buckets.clear()

    def _pair(self, dcr: str) -> tuple[TokenBucket, TokenBucket]:
        pair = self._buckets.get(dcr)
        if pair is None:
            lim = self.limits
            per_s_req, per_s_bytes = lim.requests_per_minute / 60, lim.bytes_per_minute / 60
            pair = (TokenBucket(per_s_req, max(1.0, per_s_req * lim.burst_seconds), self.clock),
                    TokenBucket(per_s_bytes, max(1.0, per_s_bytes * lim.burst_seconds), self.clock))
            self._buckets[dcr] = pair
        return pair

    def admit(self, dcr: str, size: int) -> None:
        """Take one request and ``size`` bytes, or raise 429 with the whole seconds until both fit."""
        requests, volume = self._pair(dcr)
        wait = max(requests.wait_time(1), volume.wait_time(size))
        if wait > 0:
            seconds = max(1, math.ceil(wait))
            raise ApiError(429, "TooManyRequests",
                           f"The data collection rule has exceeded its ingestion limits "
                           f"({self.limits.requests_per_minute:g} requests or {self.limits.bytes_per_minute:g} "
                           f"bytes per minute). Retry after {seconds} seconds.", retry_after=seconds)
        requests.take(1)
        volume.take(size)
