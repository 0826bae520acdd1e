"""Retry timing: Retry-After parsing and the jittered backoff bounds."""

from __future__ import annotations

import email.utils
import random
import time

from sinks.retry import Backoff, retry_after


def test_retry_after_reads_seconds_dates_and_milliseconds() -> None:
    assert retry_after({"Retry-After": "7"}) == 7.0
    assert retry_after({"retry-after-ms": "1500", "Retry-After": "9"}) == 1.5
    assert retry_after({}) is None
    future = email.utils.formatdate(time.time() + 30, usegmt=True)
    assert 25 <= (retry_after({"Retry-After": future}) or 0) <= 31
    assert retry_after({"Retry-After": email.utils.formatdate(time.time() - 60, usegmt=True)}) == 0.0


def test_backoff_is_full_jitter_capped() -> None:
    backoff = Backoff(base=0.5, cap=8.0, rng=random.Random(1))
    for attempt in range(1, 12):
        ceiling = min(8.0, 0.5 * 2 ** (attempt - 1))
        delays = [backoff.delay(attempt) for _ in range(200)]
        assert all(0 <= d <= ceiling for d in delays)
        assert max(delays) > ceiling * 0.8  # spread over the whole window, not stuck at the bottom
