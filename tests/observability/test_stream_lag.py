"""The Faust worker's lag arithmetic (the end-to-end run checks the gauge reads 0 once the worker caught up)."""

from __future__ import annotations

from streams.lag import partition_lag


def test_lag_is_high_watermark_minus_the_committed_or_next_offset() -> None:
    assert partition_lag(highwater=10, committed=7, processed=9) == 3  # the commit is what a restart resumes from
    assert partition_lag(highwater=10, committed=None, processed=4) == 5  # before the first commit
    assert partition_lag(highwater=10, committed=10, processed=9) == 0
    assert partition_lag(highwater=5, committed=7, processed=None) == 0  # never negative (a stale high watermark)
    assert partition_lag(highwater=None, committed=3, processed=2) is None  # nothing fetched yet
    assert partition_lag(highwater=10, committed=None, processed=None) is None
