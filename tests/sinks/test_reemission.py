"""The pure part of skipping the stream stage's re-emissions: positions, marks, commit metadata."""

from __future__ import annotations

import random
from collections.abc import Sequence

import pytest

from secstream.source_position import SourcePosition, parse_source, source_headers
from sinks.commit_metadata import combine
from sinks.reemission import Mark, PartitionMarks, decode_marks, marks_fields

WINDOW_MS = 600_000
RAW = "secstream.raw"


def pos(offset: int, part: int = 0, parts: int = 1, partition: int = 0, topic: str = RAW) -> SourcePosition:
    return SourcePosition(topic, partition, offset, part, parts)


def decisions(marks: PartitionMarks, stream: Sequence[tuple[SourcePosition | None, int | None]], start: int = 0
              ) -> list[bool]:
    return [marks.admit(start + i, p, ts) for i, (p, ts) in enumerate(stream)]


def test_headers_round_trip_and_bad_headers_mean_no_position() -> None:
    headers = [("traceparent", b"00-x"), *source_headers(RAW, 3, 1234, 1, 2)]
    assert parse_source(headers) == SourcePosition(RAW, 3, 1234, 1, 2)
    assert parse_source(dict(headers)) == SourcePosition(RAW, 3, 1234, 1, 2)
    assert parse_source([("secstream.source", "raw/0/7")]) == SourcePosition("raw", 0, 7, 0, 1)
    for bad in (None, [], [("secstream.source", b"raw/x/7")], [("secstream.source", b"raw-7")],
                [("secstream.source", b"raw/0/-1")], [("secstream.source", b"raw/0/7"), ("secstream.part", b"2/2")],
                [("secstream.source", b"raw/0/7"), ("secstream.part", b"one")], [("secstream.source", b"\xff/0/1")]):
        assert parse_source(bad) is None, bad


def test_a_restarted_stream_writing_older_positions_again_is_skipped() -> None:
    marks = PartitionMarks(WINDOW_MS)
    first = [(pos(o), 1000 + o) for o in (10, 11, 12, 13)]
    again = [(pos(o), 5000 + o) for o in (11, 12, 13)]  # the worker restarted from its commit at 11
    new = [(pos(o), 6000 + o) for o in (14, 15)]
    assert decisions(marks, first + again + new) == [True] * 4 + [False] * 3 + [True] * 2


def test_parts_of_a_split_batch() -> None:
    marks = PartitionMarks(WINDOW_MS)
    # only part 0 of offset 5 made it before the crash; the re-emission brings both parts, part 1 is new
    stream = [(pos(5, 0, 2), 1), (pos(5, 0, 2), 2), (pos(5, 1, 2), 3), (pos(5, 1, 2), 4)]
    assert decisions(marks, stream) == [True, False, True, False]
    # once the last part was read, the whole raw message was: a re-emission split otherwise is skipped too
    marks = PartitionMarks(WINDOW_MS)
    assert decisions(marks, [(pos(7, 0, 2), 1), (pos(7, 1, 2), 2), (pos(7, 2, 3), 3), (pos(7, 0, 1), 4)]) == [
        True, True, False, False]


def test_raw_partitions_and_topics_are_independent_and_no_header_is_never_skipped() -> None:
    marks = PartitionMarks(WINDOW_MS)
    stream = [(pos(100, partition=0), 1), (pos(3, partition=2), 2), (pos(50, partition=0, topic="other"), 3),
              (None, 4), (None, 5), (pos(4, partition=2), 6), (pos(99, partition=0), 7)]
    assert decisions(marks, stream) == [True, True, True, True, True, True, False]


def test_a_mark_older_than_the_window_no_longer_counts() -> None:
    """A raw topic created again starts at offset 0: after the window, lower positions are new data."""
    marks = PartitionMarks(WINDOW_MS)
    stream = [(pos(900), 0), (pos(3), WINDOW_MS), (pos(3), WINDOW_MS + 1), (pos(4), WINDOW_MS + 2),
              (pos(899), WINDOW_MS + 3)]
    assert decisions(marks, stream) == [True, False, True, True, True]
    # without timestamps, only positions decide
    assert decisions(PartitionMarks(WINDOW_MS), [(pos(9), None), (pos(2), None)]) == [True, False]


def test_commit_metadata_holds_the_marks_as_of_the_committed_offset() -> None:
    marks = PartitionMarks(WINDOW_MS)
    decisions(marks, [(pos(1), 10), (pos(2, partition=1), 11), (pos(3), 12)])
    marks.fold(2)  # committing offset 2: messages 0 and 1 are behind it, message 2 (raw offset 3) is not
    assert marks.committed == {(RAW, 0): Mark(1, 0, 1, 10), (RAW, 1): Mark(2, 0, 1, 11)}
    assert decode_marks(combine(marks_fields(marks.committed))) == marks.committed
    for other in (None, "", "offsets by another tool", '{"reemission": 99, "marks": []}', '{"reemission": 1}', "[1]"):
        assert decode_marks(other) is None
    assert decode_marks(combine(marks_fields({}))) == {}


def simulated_stream(rng: random.Random, raw_partitions: int = 2, length: int = 120
                     ) -> list[tuple[SourcePosition | None, int | None]]:
    """What one normalized partition receives from a stream stage that crashes now and then: per raw partition,
    the raw offsets that have output (not all do), in order, some split in two parts; after a crash the worker
    starts again a few offsets back and writes the same positions again."""
    plan = {r: sorted(rng.sample(range(3 * length), length)) for r in range(raw_partitions)}
    index = dict.fromkeys(range(raw_partitions), 0)
    out: list[tuple[SourcePosition | None, int | None]] = []
    clock = 0
    while len(out) < length:
        clock += rng.randint(1, 50)
        r = rng.randrange(raw_partitions)
        if rng.random() < 0.06:  # crash: back to an older committed offset
            index[r] = max(0, index[r] - rng.randint(1, 8))
            continue
        if rng.random() < 0.05:
            out.append((None, clock))  # a message without a position
        offset = plan[r][index[r]]
        parts = 2 if offset % 5 == 0 else 1
        for part in range(parts):
            out.append((SourcePosition(RAW, r, offset, part, parts), clock))
        index[r] += 1
    return out


@pytest.mark.parametrize("seed", range(20))
def test_each_position_is_delivered_exactly_once_and_a_restart_at_any_commit_decides_the_same(seed: int) -> None:
    stream = simulated_stream(random.Random(seed))
    marks = PartitionMarks(WINDOW_MS)
    live = decisions(marks, stream)
    delivered = [p for (p, _), keep in zip(stream, live, strict=True) if keep and p is not None]
    distinct = {p for p, _ in stream if p is not None}
    assert len(delivered) == len(set(delivered)) and set(delivered) == distinct
    assert all(keep for (p, _), keep in zip(stream, live, strict=True) if p is None)
    # The live sink has read the whole stream, its commits trail behind: a sink restarted at any committed offset
    # C (with the metadata of C) takes the same decisions from C on.
    for commit in range(len(stream) + 1):
        marks.fold(commit)
        restarted = PartitionMarks(WINDOW_MS)
        restarted.restore(decode_marks(combine(marks_fields(marks.committed))) or {})
        assert decisions(restarted, stream[commit:], start=commit) == live[commit:], commit


def test_commit_metadata_leaves_out_marks_far_older_than_the_newest() -> None:
    from sinks.reemission import ReemissionGuard

    guard = ReemissionGuard("normalized", WINDOW_MS / 1000, tail_consumer=lambda: None)  # type: ignore[arg-type,return-value]
    marks = guard._partitions[0] = PartitionMarks(WINDOW_MS)
    marks.admit(0, pos(5, partition=7), 1_000)  # a raw partition that stopped feeding this one
    marks.admit(1, pos(9, partition=1), 1_000 + 3 * WINDOW_MS)
    assert decode_marks(combine(guard.metadata_fields(0, 2))) == {(RAW, 1): Mark(9, 0, 1, 1_000 + 3 * WINDOW_MS)}
    assert guard.metadata_fields(3, 2) == {}  # a partition this consumer holds no marks for
