"""Offset accounting: only wholly delivered messages are committed, contiguously per partition."""

from __future__ import annotations

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from sinks.checkpoint import OffsetTracker, delivery_record, merge_ranges, ranges_from_records
from sinks.request_builder import Segment


def test_nothing_is_committed_past_an_unfinished_message() -> None:
    t = OffsetTracker()
    for offset in (0, 1, 2):
        t.register(0, offset, 10)
    t.accepted([Segment(0, 1, 10), Segment(0, 2, 10)])
    assert t.committable() == {}
    t.accepted([Segment(0, 0, 4)])
    assert t.committable() == {}
    t.dead_lettered([Segment(0, 0, 6)])
    (r,) = t.committable().values()
    assert (r.first_offset, r.last_offset, r.rows_accepted, r.rows_dead_lettered) == (0, 2, 24, 6)


def test_partitions_are_independent_and_gaps_in_offsets_are_fine() -> None:
    t = OffsetTracker()
    t.register(0, 5, 1)
    t.register(0, 7, 0)  # empty batch: done at once, but only after offset 5
    t.register(1, 100, 2)
    t.register(0, 9, 1)
    t.accepted([Segment(0, 9, 1), Segment(1, 100, 2)])
    ranges = t.committable()
    assert set(ranges) == {1}
    assert ranges[1].last_offset + 1 == 101
    t.mark_committed(ranges.values())
    t.accepted([Segment(0, 5, 1)])
    ranges = t.committable()
    assert set(ranges) == {0}
    assert (ranges[0].first_offset, ranges[0].last_offset) == (5, 9)
    t.mark_committed(ranges.values())
    assert t.committable() == {} and t.pending_messages == 0


def test_forgotten_partitions_ignore_late_results() -> None:
    t = OffsetTracker()
    t.register(3, 0, 5)
    t.forget([3])
    t.accepted([Segment(3, 0, 5)])
    assert t.committable() == {}


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=4), min_size=1, max_size=30), st.randoms())
def test_committed_position_is_always_the_first_unfinished_message(rows: list[int], rng) -> None:
    t = OffsetTracker()
    chunks: list[Segment] = []
    for offset, n in enumerate(rows):
        t.register(0, offset * 2, n)  # offsets with gaps, as after transaction markers
        chunks += [Segment(0, offset * 2, 1)] * n
    rng.shuffle(chunks)
    remaining = {offset * 2: n for offset, n in enumerate(rows)}
    committed = None
    for seg in [None, *chunks]:
        if seg is not None:
            t.accepted([seg])
            remaining[seg.offset] -= 1
        done_prefix = []
        for offset, n in sorted(remaining.items()):
            if n:
                break
            done_prefix.append(offset)
        ranges = t.committable()
        if ranges:
            t.mark_committed(ranges.values())
            committed = ranges[0].last_offset + 1
        # one past the last message of the finished prefix; never beyond an unfinished message
        assert committed == (done_prefix[-1] + 1 if done_prefix else None)


def test_delivery_log_round_trip_merges_touching_ranges() -> None:
    t = OffsetTracker()
    values = []
    for offsets in ((0, 1, 2), (3, 4), (8,)):
        for o in offsets:
            t.register(2, o, 1)
            t.accepted([Segment(2, o, 1)])
        ranges = t.committable()
        t.mark_committed(ranges.values())
        _, value = delivery_record("ws-a", ["dcr-" + "0" * 32], "Custom-SecurityEvent", "norm", ranges[2])
        values.append(value)
    other = delivery_record("ws-b", [], "s", "norm", ranges[2])[1]
    assert orjson.loads(values[0])["rows_accepted"] == 3
    assert ranges_from_records([*values, other], "ws-a", "norm") == {2: [(0, 8)]}
    assert merge_ranges([(5, 9), (0, 3), (4, 4), (12, 12)]) == [(0, 9), (12, 12)]
