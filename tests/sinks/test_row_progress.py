"""Row progress in the commit metadata: ranges, the format (and the older reader), and a randomized simulation of
the sink (request builder + offset tracker + metadata) killed at random points and restarted."""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass, field

import orjson
import pytest

from sinks.checkpoint import OffsetTracker
from sinks.commit_metadata import combine
from sinks.reemission import Mark, decode_marks, marks_fields
from sinks.request_builder import Request, RequestBuilder, split_request
from sinks.row_progress import (
    MAX_ENTRIES,
    SavedProgress,
    add_range,
    decode_progress,
    missing,
    progress_fields,
)


def test_ranges_merge_and_complement() -> None:
    ranges: list[tuple[int, int]] = []
    for start, end in ((10, 20), (0, 5), (5, 7), (30, 40), (18, 31), (50, 50)):
        add_range(ranges, start, end)
    assert ranges == [(0, 7), (10, 40)]
    assert missing(ranges, 45) == [(7, 10), (40, 45)]
    assert missing([], 3) == [(0, 3)]
    assert missing([(0, 3)], 3) == []


def test_metadata_round_trip_beside_reemission_marks_and_the_older_reader_still_reads_the_marks() -> None:
    marks = {("secstream.raw", 2): Mark(14, 0, 1, 1_700_000_000_000)}
    text = combine(marks_fields(marks), progress_fields(105, [(110, 112)], {107: [(0, 40), (80, 120)]}))
    assert decode_marks(text) == marks  # the format written before row progress existed is still read the same
    saved = decode_progress(text)
    assert saved is not None
    assert saved.done(104, 9) == [(0, 9)]  # before ``through``: wholly done
    assert saved.done(105, 9) == []
    assert saved.done(107, 100) == [(0, 40), (80, 100)]  # clipped to the message's rows
    assert saved.done(111, 3) == [(0, 3)]
    assert decode_progress(combine(marks_fields(marks))) is None  # metadata of the older writer: nothing skipped
    assert decode_progress("") is None and decode_progress("not json") is None
    assert decode_progress('{"progress": 99, "rows": [[1, [0, 5]]]}') is None


def test_metadata_is_bounded_and_drops_the_highest_offsets_first() -> None:
    partial = {offset: [(k, k + 1) for k in range(0, 40, 2)] for offset in range(100, 200)}
    fields = progress_fields(None, [], partial)
    assert len(fields["rows"]) == MAX_ENTRIES and fields["rows"][0][0] == 100
    small = progress_fields(None, [], partial, budget=300)
    assert len(orjson.dumps(small)) <= 300 and small["rows"][0][0] == 100
    assert progress_fields(None, [], {}) == {}


def test_builder_segments_carry_row_indices_through_rejections_requests_and_splits() -> None:
    builder = RequestBuilder(max_request_bytes=4096)
    rows = [{"Computer": "A", "EventID": i, "EventData": "x" * 300} for i in range(30)]
    rows[4] = {"Computer": "A", "EventData": "y" * 5000}  # too large even alone: rejected
    packed = builder.add(0, 7, "A", rows[3:], first_row=3)
    assert [(r.segment.first, r.segment.rows) for r in packed.rejected] == [(4, 1)]
    requests = packed.requests + builder.drain()
    sent = []
    for request in requests:
        index = 0
        for seg in request.segments:
            for i in range(seg.first, seg.end):
                assert orjson.loads(request.rows[index])["EventID"] == i
                sent.append(i)
                index += 1
    assert sent == [3, *range(5, 30)]
    first, second = split_request(requests[-1])
    assert rows_of(first) + rows_of(second) == rows_of(requests[-1])


def test_split_keeps_row_indices() -> None:
    request = Request()
    for i in (0, 1, 2, 5, 6, 7):
        request.add(1, 9, f'{{"i":{i}}}'.encode(), i)
    assert [(s.first, s.rows) for s in request.segments] == [(0, 3), (5, 3)]
    first, second = split_request(request)
    assert [(s.first, s.rows) for s in first.segments] == [(0, 3)]
    assert [(s.first, s.rows) for s in second.segments] == [(5, 3)]


# -------------------------------------------------------------------------------------------- simulation

Row = tuple[int, int, int]  # partition, offset, row index


@dataclass
class Simulation:
    """The sink's bookkeeping (real builder and tracker) over a fixed log, with requests finishing in random
    order, killed at random points: everything not committed is lost, then a new sink starts from the commits."""

    rng: random.Random
    log: dict[int, list[int]]  # partition -> row count per offset
    max_in_flight: int = 4
    budget: int | None = None
    delivered: Counter[Row] = field(default_factory=Counter)
    in_flight_at_kills: Counter[Row] = field(default_factory=Counter)
    commits: dict[int, tuple[int, str]] = field(default_factory=dict)  # partition -> (offset, metadata)

    def run(self, kills: int) -> None:
        for _ in range(kills):
            self.life(kill_after=self.rng.randint(0, 60))
        self.life(kill_after=None)

    def life(self, kill_after: int | None) -> None:
        tracker = OffsetTracker()
        builder = RequestBuilder(max_request_bytes=self.rng.choice([300, 600, 2000]))
        in_flight: list[Request] = []
        committed = {p: self.commits.get(p, (0, ""))[0] for p in self.log}
        saved = {p: decode_progress(self.commits.get(p, (0, ""))[1]) for p in self.log}
        queue = [(p, o) for p in self.log for o in range(committed[p], len(self.log[p]))]
        self.rng.shuffle(queue)  # partitions interleave; within one, offsets stay in order
        queue.sort(key=lambda po: (po[1], po[0]) if self.rng.random() < 0.5 else (po[1], -po[0]))
        steps = 0
        while queue or in_flight or builder.open_rows:
            if kill_after is not None and steps >= kill_after:
                for request in in_flight:
                    self.in_flight_at_kills.update(rows_of(request))
                return
            steps += 1
            if queue and len(in_flight) < self.max_in_flight and self.rng.random() < 0.6:
                p, o = queue.pop(0)
                rows = self.log[p][o]
                earlier = saved[p]
                done = earlier.done(o, rows) if earlier is not None else []
                tracker.register(p, o, rows, done)
                for start, end in missing(done, rows):
                    content = [{"p": p, "o": o, "i": i} for i in range(start, end)]
                    in_flight += builder.add(p, o, "host", content, first_row=start).requests
            elif in_flight:
                request = in_flight.pop(self.rng.randrange(len(in_flight)))
                for row, (p, o, i) in zip(request.rows, rows_of(request), strict=True):
                    assert orjson.loads(row) == {"p": p, "o": o, "i": i}
                self.delivered.update(rows_of(request))
                if self.rng.random() < 0.1:
                    tracker.dead_lettered(request.segments)  # written to the dead-letter topic and acknowledged
                else:
                    tracker.accepted(request.segments)
                self.commit(tracker, committed)
            else:
                in_flight += builder.drain()

    def commit(self, tracker: OffsetTracker, committed: dict[int, int]) -> None:
        """As the sink does after a request finishes: the offset moves only sometimes (its delivery-log record must
        be acknowledged first); the row progress is committed every time."""
        ranges = tracker.committable()
        if self.rng.random() < 0.5:
            for r in ranges.values():
                committed[r.partition] = r.last_offset + 1
            tracker.mark_committed(ranges.values())
        for p, offset in committed.items():
            self.commits[p] = (offset, combine(tracker.progress_fields(p, offset, self.budget)))


def rows_of(request: Request) -> list[Row]:
    return [(s.partition, s.offset, i) for s in request.segments for i in range(s.first, s.end)]


@pytest.mark.parametrize("seed", range(60))
def test_after_random_kills_every_row_arrives_and_only_rows_in_flight_come_twice(seed: int) -> None:
    rng = random.Random(seed)
    log = {p: [rng.choice([0, 1, 3, 8, 25, 60]) for _ in range(rng.randint(1, 25))] for p in range(rng.randint(1, 3))}
    sim = Simulation(rng, log, max_in_flight=rng.randint(1, 4))
    sim.run(kills=rng.randint(1, 4))
    every_row = {(p, o, i) for p, counts in log.items() for o, n in enumerate(counts) for i in range(n)}
    assert set(sim.delivered) == every_row
    extra = {row: n - 1 for row, n in sim.delivered.items() if n > 1}
    assert all(n <= sim.in_flight_at_kills[row] for row, n in extra.items()), \
        {row: (n, sim.in_flight_at_kills[row]) for row, n in extra.items() if n > sim.in_flight_at_kills[row]}


@pytest.mark.parametrize("seed", range(20))
def test_with_truncated_metadata_rows_may_come_twice_but_none_is_lost(seed: int) -> None:
    rng = random.Random(1000 + seed)
    log = {0: [rng.choice([1, 5, 40]) for _ in range(30)]}
    sim = Simulation(rng, log, max_in_flight=4, budget=rng.choice([0, 40, 120]))
    sim.run(kills=3)
    assert set(sim.delivered) == {(0, o, i) for o, n in enumerate(log[0]) for i in range(n)}


def test_a_saved_entry_never_covers_rows_outside_its_message() -> None:
    saved = SavedProgress(rows={5: [(0, 10)]})
    assert saved.done(5, 4) == [(0, 4)] and saved.done(6, 10) == []
