"""Exact, bounded dedup of raw events across load-balanced collectors. Pure: no I/O, no clock unless given one.

Identity of an event: (Computer, Channel, EventRecordID, TimeCreated). Windows numbers the records of each event log
(one Computer + Channel) with a counter that only grows, so within one life of the log the record id alone names an
event. The counter restarts when the log is cleared (Security then logs 1102), so the same record id can come back
for a different event: TimeCreated tells those apart.

Layout, per (Computer, Channel) log:

* epochs, one per life of the log, named by the TimeCreated of the first event placed in them. A new epoch starts
  on 1102, or when an event's record id is already taken in the epoch its time belongs to;
* per epoch, sorted disjoint ranges [lo, hi] of record ids seen (``array('q')`` columns lo, hi, and the offset of
  the range's first time), and the exact TimeCreated of every event, in record-id order (``array('q')`` times).
  That is 8 bytes per event plus 24 per run of consecutive ids: a source that sends every record costs ~8 B/event,
  one whose ids have gaps (filtered at the source) a little more per run. Ranges never cross a bucket of 1024 ids,
  so state can be persisted bucket by bucket.

An event (r, t) is a duplicate iff some epoch has a range covering r whose stored time for r equals t. That is the
identity itself, so the test is exact with no assumption about clocks or arrival order: a duplicate always finds
its first copy (until it expires), and a distinct event never matches a stored (r, t) pair. Epochs only keep ids
of different lives apart; which epoch an event lands in never changes the answer.

Expiry: the leading events of a range whose TimeCreated is older than the newest TimeCreated of the log minus the
window are dropped (event time, so backfill of old data is deduplicated as well as live data); a whole log is
dropped when no event came from it for a window of processing time. Events without an EventRecordID cannot be
placed in ranges: they are kept exactly, as (TimeCreated, content fingerprint) pairs in buckets of ~2 h
(``streams.identity.content_fingerprint``, the same stand-in for the record id that ``EventOriginId`` uses), which
costs ~150 B per event; only exports without record numbers take this path.

Persistence: ``delta()`` returns the (log, epoch, bucket) records changed since the last call (None = deleted), so
a changelog gets one record per bucket touched per batch, never one per event; ``load`` rebuilds from them.
"""

from __future__ import annotations

import contextlib
import struct
import sys
import time
from array import array
from bisect import bisect_left, bisect_right
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from itertools import compress, repeat
from operator import add, eq, gt, itemgetter, lt, ne, not_, rshift, sub
from typing import Any

from streams.identity import content_fingerprint

TICKS_PER_SECOND = 10_000_000
DEFAULT_WINDOW_SECONDS = 24 * 3600
BUCKET_BITS = 10
UNNUMBERED = -(2**63)  # the "epoch" of state records holding events without a record id
UNNUMBERED_BITS = 36  # their buckets: 2**36 ticks of TimeCreated, ~1.9 h
_SEP = "\x1f"
_BIG_ENDIAN = sys.byteorder == "big"
_BUCKET_MASK = (1 << BUCKET_BITS) - 1
_NO_TIME = -(2**63)

_computer_of = itemgetter("computer")
_channel_of = itemgetter("channel")
_record_of = itemgetter("event_record_id")
_time_of = itemgetter("time_created")
_event_id_of = itemgetter("event_id")


def _q() -> array[int]:
    return array("q")


def _extend(column: array[int], values: list[int]) -> None:
    # struct converts a list of ints to int64 at a fraction of the cost of array.extend (no argument parsing per
    # item); out of range, array.extend raises its own error as it always did.
    try:
        packed = struct.pack(f"{len(values)}q", *values)
    except struct.error:
        column.extend(values)
    else:
        column.frombytes(packed)


@dataclass
class Epoch:
    """One life of a log: sorted disjoint record-id ranges and the TimeCreated of every id in them."""

    start: int
    lo: array[int] = field(default_factory=_q)
    hi: array[int] = field(default_factory=_q)
    off: array[int] = field(default_factory=_q)  # index in ``times`` of each range's first id
    times: array[int] = field(default_factory=_q)
    # At least the newest TimeCreated ever held (an upper bound: expiry leaves it), so a block of newer events can
    # skip this epoch's lookups.
    latest: int = field(default=_NO_TIME, compare=False)

    def time_of(self, r: int) -> int | None:
        i = bisect_right(self.lo, r) - 1
        if i >= 0 and r <= self.hi[i]:
            return self.times[self.off[i] + r - self.lo[i]]
        return None

    def insert(self, r: int, t: int) -> int:
        """Record (r, t); r must not be covered. Returns the bucket changed."""
        lo, hi, off, times = self.lo, self.hi, self.off, self.times
        n = len(lo)
        i = bisect_right(lo, r) - 1
        j = i + 1
        bucket = r >> BUCKET_BITS
        joins_left = i >= 0 and hi[i] == r - 1 and (hi[i] >> BUCKET_BITS) == bucket
        joins_right = j < n and lo[j] == r + 1 and (lo[j] >> BUCKET_BITS) == bucket
        pos = off[j] if j < n else len(times)
        if t > self.latest:
            self.latest = t
        if pos == len(times):
            times.append(t)
        else:
            times.insert(pos, t)
        if joins_left and joins_right:
            hi[i] = hi[j]
            del lo[j], hi[j], off[j]
            shift_from = j
        elif joins_left:
            hi[i] = r
            shift_from = j
        elif joins_right:
            lo[j] = r
            shift_from = j + 1
        else:
            lo.insert(j, r)
            hi.insert(j, r)
            off.insert(j, pos)
            shift_from = j + 1
        for m in range(shift_from, len(off)):
            off[m] += 1
        return bucket

    def extend_ascending(self, rs: list[int], ts: list[int], gaps: list[int], newest: int) -> list[int]:
        """Record events whose ids ascend strictly, all above the last range (``gaps``: each id minus the one before
        it; ``newest``: the greatest time), with the same state as ``insert`` one by one, built with C-level passes.
        Returns the buckets changed, in id order."""
        lo, hi, off = self.lo, self.hi, self.off
        base = len(self.times)
        _extend(self.times, ts)
        if newest > self.latest:
            self.latest = newest
        # A run of consecutive ids starts at each id that does not follow the one before it, and where a bucket
        # starts.
        starts = list(compress(range(1, len(rs)), map(ne, gaps, repeat(1))))
        starts.insert(0, 0)
        first, last = rs[0], rs[-1]
        if first >> BUCKET_BITS != last >> BUCKET_BITS:
            bucket_starts = (bisect_left(rs, b << BUCKET_BITS)
                             for b in range((first >> BUCKET_BITS) + 1, (last >> BUCKET_BITS) + 1))
            starts = sorted(set(starts).union(bucket_starts))
        buckets = list(dict.fromkeys(map(rshift, map(rs.__getitem__, starts), repeat(BUCKET_BITS))))
        if len(hi) and hi[-1] == first - 1 and first & _BUCKET_MASK:  # the first id extends the last range
            del starts[0]
            hi[-1] = rs[starts[0] - 1] if starts else last
        if starts:
            _extend(lo, list(map(rs.__getitem__, starts)))
            ends = list(map(rs.__getitem__, map(sub, starts[1:], repeat(1))))
            ends.append(last)
            _extend(hi, ends)
            _extend(off, list(map(add, starts, repeat(base))))
        return buckets

    def may_hold(self, r_first: int, r_last: int, t_min: int) -> bool:
        """Whether some (r, t) with r in [r_first, r_last] and t >= t_min could be stored here."""
        return bool(len(self.lo)) and self.lo[0] <= r_last and r_first <= self.hi[-1] and self.latest >= t_min

    def expire(self, horizon: int, touched: set[int]) -> None:
        """Drop the leading ids of each range whose TimeCreated is older than ``horizon``."""
        lo, hi, off, times = self.lo, self.hi, self.off, self.times
        if not len(times) or min(times) >= horizon:
            return
        new = Epoch(self.start)
        for k in range(len(lo)):
            first = off[k]
            end = first + hi[k] - lo[k] + 1
            d = first
            while d < end and times[d] < horizon:
                d += 1
            if d > first:
                touched.add(lo[k] >> BUCKET_BITS)
            if d == end:
                continue
            new.lo.append(lo[k] + d - first)
            new.hi.append(hi[k])
            new.off.append(len(new.times))
            new.times.extend(times[d:end])
        self.lo, self.hi, self.off, self.times = new.lo, new.hi, new.off, new.times

    def bucket_bytes(self, bucket: int) -> bytes | None:
        a = bisect_right(self.lo, (bucket << BUCKET_BITS) - 1)
        b = bisect_right(self.lo, ((bucket + 1) << BUCKET_BITS) - 1)
        if a == b:
            return None
        t_end = self.off[b] if b < len(self.off) else len(self.times)
        out = array("q", [b - a])
        out.extend(self.lo[a:b])
        out.extend(self.hi[a:b])
        out.extend(self.times[self.off[a] : t_end])
        if _BIG_ENDIAN:  # records are little-endian on every machine
            out.byteswap()
        return out.tobytes()

    def add_bucket(self, value: bytes) -> None:
        """Append one persisted bucket (buckets must come in id order)."""
        cols = array("q")
        cols.frombytes(value)
        if _BIG_ENDIAN:
            cols.byteswap()
        n = cols[0]
        lo, hi = cols[1 : 1 + n], cols[1 + n : 1 + 2 * n]
        times = cols[1 + 2 * n :]
        if n < 0 or len(times) != sum(b - a + 1 for a, b in zip(lo, hi, strict=True)):
            raise ValueError("dedup state record has the wrong length")
        if len(times) and max(times) > self.latest:
            self.latest = max(times)
        at = 0
        for first, last in zip(lo, hi, strict=True):
            count = last - first + 1
            self.lo.append(first)
            self.hi.append(last)
            self.off.append(len(self.times))
            self.times.extend(times[at : at + count])
            at += count

    def buckets(self) -> set[int]:
        return {v >> BUCKET_BITS for v in self.lo}

    def nbytes(self) -> int:
        cols = (self.lo, self.hi, self.off, self.times)
        return sum(col.buffer_info()[1] * col.itemsize for col in cols)


@dataclass
class LogState:
    """All epochs of one (Computer, Channel), oldest first."""

    epochs: list[Epoch] = field(default_factory=list)
    newest: int = -(2**62)
    pruned_at: int = -(2**62)
    last_seen: float = 0.0
    # (epoch start, bucket) pairs changed since the last delta
    touched: set[tuple[int, int]] = field(default_factory=set)
    # events without a record id: time bucket -> {(TimeCreated, fingerprint)}
    unnumbered: dict[int, set[tuple[int, str]]] = field(default_factory=dict)

    def seen_unnumbered(self, t: int, fingerprint: str) -> bool:
        bucket = self.unnumbered.get(t >> UNNUMBERED_BITS)
        return bucket is not None and (t, fingerprint) in bucket

    def add_unnumbered(self, t: int, fingerprint: str) -> None:
        b = t >> UNNUMBERED_BITS
        self.unnumbered.setdefault(b, set()).add((t, fingerprint))
        self.touched.add((UNNUMBERED, b))
        if t > self.newest:
            self.newest = t

    def unnumbered_bytes(self, b: int) -> bytes | None:
        entries = self.unnumbered.get(b)
        if not entries:
            return None
        return "\n".join(f"{t} {fp}" for t, fp in sorted(entries)).encode()

    def all_records(self) -> set[tuple[int, int]]:
        out = {(UNNUMBERED, b) for b in self.unnumbered}
        for epoch in self.epochs:
            out.update((epoch.start, b) for b in epoch.buckets())
        return out

    def record_bytes(self, start: int, bucket: int) -> bytes | None:
        if start == UNNUMBERED:
            return self.unnumbered_bytes(bucket)
        epoch = next((e for e in self.epochs if e.start == start), None)
        return epoch.bucket_bytes(bucket) if epoch is not None else None

    def is_duplicate(self, r: int, t: int) -> bool:
        return any(epoch.time_of(r) == t for epoch in reversed(self.epochs))

    def admit(self, r: int, t: int, clears_log: bool) -> bool:
        """One event with a record id: False if it is a duplicate, else recorded and True."""
        if self.is_duplicate(r, t):
            return False
        self.place(r, t, clears_log)
        return True

    def admit_unnumbered(self, event: Mapping[str, Any], t: int) -> bool:
        """One event without a record id: False if it is a duplicate, else recorded and True."""
        fingerprint = content_fingerprint(event)
        if self.seen_unnumbered(t, fingerprint):
            return False
        self.add_unnumbered(t, fingerprint)
        return True

    def block_end(self, rs: list[int], ts: list[int], ascending: list[bool] | None, clears: list[int],
                  c: int) -> tuple[int, bool]:
        """The events from ``c`` on that can go to the newest epoch as one block: (end, True) when events
        [c, end) can be appended with ``append_block``; (end, False) when [c, end) would be but an older epoch might
        hold one of them (they then go one by one); (c, False) when event c cannot start a block.

        ``ascending[j]`` tells ``rs[j + 1] > rs[j]`` (None: all do); ``clears`` are the positions of 1102 events
        of Security, ascending. Event by event, each of the block would be no duplicate in the newest epoch (its id
        is above the last one there) and be placed in it (it clears nothing, and the newest epoch is the one its time
        belongs to: the only one, or one that started at or before that time)."""
        if not self.epochs:
            return c, False
        newest = self.epochs[-1]
        start = newest.start
        alone = len(self.epochs) == 1
        if not len(newest.hi) or rs[c] <= newest.hi[-1] or (ts[c] < start and not alone):
            return c, False
        k = bisect_left(clears, c)
        if k < len(clears) and clears[k] == c:
            return c, False
        end = len(rs)
        if ascending is not None:
            with contextlib.suppress(ValueError):  # no False: all ascend to the end
                end = ascending.index(False, c) + 1
        if k < len(clears) and clears[k] < end:
            end = clears[k]
        if alone:
            return end, True
        block_times = ts[c:end]
        oldest = min(block_times)
        if oldest < start:  # from the first event older than the epoch on, another epoch is the target
            end = c + list(map(lt, block_times, repeat(start))).index(True)
            oldest = min(ts[c:end])
        return end, not any(e.may_hold(rs[c], rs[end - 1], oldest) for e in self.epochs[:-1])

    def append_block(self, rs: list[int], ts: list[int], gaps: list[int], newest: int | None = None) -> None:
        """Record a block found by ``block_end`` in the newest epoch (``gaps`` and ``newest`` as for
        ``Epoch.extend_ascending``; None: computed here)."""
        epoch = self.epochs[-1]
        if newest is None:
            newest = max(ts)
        self.touched.update(zip(repeat(epoch.start), epoch.extend_ascending(rs, ts, gaps, newest)))
        if newest > self.newest:
            self.newest = newest

    def place(self, r: int, t: int, clears_log: bool) -> None:
        epochs = self.epochs
        # The epoch this time belongs to: the newest that started at or before t (else the oldest).
        k = len(epochs) - 1
        while k > 0 and epochs[k].start > t:
            k -= 1
        target = epochs[k] if epochs else None
        if target is None or (clears_log and target.start != t) or target.time_of(r) is not None:
            start = t
            while any(e.start == start for e in epochs):  # starts name epochs: keep them unique
                start += 1
            target = Epoch(start=start)
            pos = len(epochs)
            while pos > 0 and epochs[pos - 1].start > start:
                pos -= 1
            epochs.insert(pos, target)
        self.touched.add((target.start, target.insert(r, t)))
        if t > self.newest:
            self.newest = t

    def expire(self, window_ticks: int) -> None:
        horizon = self.newest - window_ticks
        for epoch in self.epochs:
            changed: set[int] = set()
            epoch.expire(horizon, changed)
            self.touched.update((epoch.start, b) for b in changed)
        self.epochs = [e for e in self.epochs if len(e.lo)]
        for b in [b for b in self.unnumbered if ((b + 1) << UNNUMBERED_BITS) <= horizon]:
            del self.unnumbered[b]
            self.touched.add((UNNUMBERED, b))
        self.pruned_at = self.newest


def _log_prefix(computer: str, channel: str) -> str:
    return f"{computer}{_SEP}{channel}{_SEP}"


def state_key(computer: str, channel: str, epoch_start: int, bucket: int) -> bytes:
    return f"{_log_prefix(computer, channel)}{epoch_start}{_SEP}{bucket}".encode()


def parse_state_key(key: bytes) -> tuple[str, str, int, int]:
    computer, channel, start, bucket = key.decode().split(_SEP)
    return computer, channel, int(start), int(bucket)


class Deduper:
    """Dedup state of one partition. ``admit_batch`` is the hot path; ``delta`` feeds the changelog."""

    def __init__(self, window_seconds: float = DEFAULT_WINDOW_SECONDS, clock: Any = time.time) -> None:
        self.window_ticks = int(window_seconds * TICKS_PER_SECOND)
        self.idle_seconds = float(window_seconds)
        self._prune_every = max(self.window_ticks // 16, 1)
        self._clock = clock
        self.logs: dict[tuple[str, str], LogState] = {}
        self._evicted: dict[tuple[str, str], set[tuple[int, int]]] = {}
        self._last_sweep = clock()

    def admit_batch(self, events: Iterable[Mapping[str, Any]]) -> tuple[list[Any], list[Any]]:
        """Split events into (kept, duplicates), recording the kept ones. Order within each list is kept.

        Same outcome and same state records as ``admit_each``, with the per-event work done by C-level passes: the
        identity columns are read once, events are grouped by log (logs are independent, so each log's events are
        taken in their batch order, logs in order of first appearance), and a block of ascending record ids above
        everything its log holds is appended in one step; anything else goes one event at a time."""
        batch = events if isinstance(events, list) else list(events)
        if not batch:
            return self.admit_each(batch)
        try:
            computers = list(map(_computer_of, batch))
            channels = list(map(_channel_of, batch))
            records = list(map(_record_of, batch))
            times = list(map(_time_of, batch))
            event_ids = list(map(_event_id_of, batch))
            one_computer = computers.count(computers[0]) == len(computers)
            keys: list[Any] = channels if one_computer else list(zip(computers, channels, strict=True))
            groups = [keys[0]] if keys.count(keys[0]) == len(keys) else list(dict.fromkeys(keys))
        except (KeyError, TypeError):  # a field missing or unhashable: one by one, failing where it always did
            return self.admit_each(batch)
        log_keys = [(computers[0] or "", g or "") if one_computer else (g[0] or "", g[1] or "") for g in groups]
        try:
            newest = max(times)  # a TypeError (or None) here: an event without a time
        except TypeError:
            newest = None
        if newest is None or len(set(log_keys)) < len(groups):  # odd input (e.g. None and "" name one log)
            return self.admit_each(batch)
        now = self._clock()
        verdicts: list[bool] | None = None  # per event, once one was judged alone (None: all kept so far)
        for group, log_key, positions in zip(groups, log_keys, _positions(keys, groups), strict=True):
            log = self._log(log_key)
            channel = group if one_computer else group[1]
            if positions is None:
                rs, ts, group_newest = records, times, newest
            else:
                rs, ts = list(map(records.__getitem__, positions)), list(map(times.__getitem__, positions))
                group_newest = None
            verdicts = _admit_log(log, channel == "Security", batch, positions, rs, ts, group_newest, event_ids,
                                  verdicts)
        self._after_batch(set(log_keys), now)
        if verdicts is None:
            return list(batch), []
        return list(compress(batch, verdicts)), list(compress(batch, map(not_, verdicts)))

    def admit_each(self, events: Iterable[Mapping[str, Any]]) -> tuple[list[Any], list[Any]]:
        """``admit_batch`` one event at a time (the reference it is tested against)."""
        kept: list[Any] = []
        duplicates: list[Any] = []
        now = self._clock()
        touched_logs: set[tuple[str, str]] = set()
        computer = channel = None
        log = LogState()  # replaced on the first event
        marked: tuple[int, int] | None = None  # the (epoch, bucket) last added to log.touched in this call
        for ev in events:
            # Batches hold one host's events, mostly of one channel: look the log up only when it changes.
            if ev["computer"] != computer or ev["channel"] != channel:
                computer, channel = ev["computer"], ev["channel"]
                key = (computer or "", channel or "")
                log = self._log(key)
                marked = None
                touched_logs.add(key)
            t = ev["time_created"]
            r = ev["event_record_id"]
            if r is None:
                (kept if log.admit_unnumbered(ev, t) else duplicates).append(ev)
                continue
            clears_log = ev["event_id"] == 1102 and channel == "Security"
            epochs = log.epochs
            if len(epochs) == 1 and not clears_log:
                # Fast path, nearly every event of a live log: one life, an id past the last one seen.
                epoch = epochs[0]
                hi = epoch.hi
                last = hi[-1]
                if r > last and t >= epoch.start:
                    bucket = r >> BUCKET_BITS
                    if r == last + 1 and bucket == (last >> BUCKET_BITS):
                        hi[-1] = r
                    else:
                        epoch.lo.append(r)
                        hi.append(r)
                        epoch.off.append(len(epoch.times))
                    if marked is None or marked[1] != bucket or marked[0] != epoch.start:
                        marked = (epoch.start, bucket)
                        log.touched.add(marked)
                    epoch.times.append(t)
                    if t > epoch.latest:
                        epoch.latest = t
                    if t > log.newest:
                        log.newest = t
                    kept.append(ev)
                    continue
            marked = None
            (kept if log.admit(r, t, clears_log) else duplicates).append(ev)
        self._after_batch(touched_logs, now)
        return kept, duplicates

    def _log(self, key: tuple[str, str]) -> LogState:
        log = self.logs.get(key)
        if log is None:
            log = self.logs[key] = LogState()
            self._evicted.pop(key, None)
        return log

    def _after_batch(self, touched_logs: set[tuple[str, str]], now: float) -> None:
        for key in touched_logs:
            log = self.logs[key]
            log.last_seen = now
            if log.newest - log.pruned_at >= self._prune_every:
                log.expire(self.window_ticks)
        if now - self._last_sweep >= self.idle_seconds / 16:
            self._evict_idle(now)

    def _evict_idle(self, now: float) -> None:
        self._last_sweep = now
        for key in [k for k, log in self.logs.items() if now - log.last_seen > self.idle_seconds]:
            log = self.logs.pop(key)
            self._evicted[key] = log.touched | log.all_records()

    def delta(self) -> dict[bytes, bytes | None]:
        """State records changed since the last call: key -> bucket bytes, or None when the bucket is now empty."""
        out: dict[bytes, bytes | None] = {}
        for (computer, channel), gone in self._evicted.items():
            for start, bucket in gone:
                out[state_key(computer, channel, start, bucket)] = None
        self._evicted.clear()
        for (computer, channel), log in self.logs.items():
            if not log.touched:
                continue
            for start, bucket in log.touched:
                out[state_key(computer, channel, start, bucket)] = log.record_bytes(start, bucket)
            log.touched.clear()
        return out

    def snapshot(self) -> dict[bytes, bytes]:
        """Every state record (for a full rewrite or a test)."""
        out: dict[bytes, bytes] = {}
        for (computer, channel), log in self.logs.items():
            for start, bucket in log.all_records():
                value = log.record_bytes(start, bucket)
                if value is not None:
                    out[state_key(computer, channel, start, bucket)] = value
        return out

    def load(self, records: Iterable[tuple[bytes, bytes | None]]) -> None:
        """Rebuild from state records (a snapshot, or a changelog's latest value per key)."""
        grouped: dict[tuple[str, str], dict[int, list[bytes]]] = {}
        for key, value in records:
            if not value:
                continue
            computer, channel, start, _bucket = parse_state_key(key)
            grouped.setdefault((computer, channel), {}).setdefault(start, []).append(value)
        now = self._clock()
        for log_key, by_start in grouped.items():
            log = LogState(last_seen=now)
            for value in by_start.pop(UNNUMBERED, ()):
                for line in value.decode().splitlines():
                    t_text, fingerprint = line.split(" ", 1)
                    t = int(t_text)
                    log.unnumbered.setdefault(t >> UNNUMBERED_BITS, set()).add((t, fingerprint))
                    log.newest = max(log.newest, t)
            for start in sorted(by_start):
                epoch = Epoch(start=start)
                for value in sorted(by_start[start], key=_first_id):
                    epoch.add_bucket(value)
                log.epochs.append(epoch)
                if len(epoch.times):
                    log.newest = max(log.newest, max(epoch.times))
            log.pruned_at = log.newest
            self.logs[log_key] = log

    def state_bytes(self) -> int:
        """Bytes held by the range columns (the part that grows with events)."""
        return sum(e.nbytes() for log in self.logs.values() for e in log.epochs)

    def range_count(self) -> int:
        return sum(len(e.lo) for log in self.logs.values() for e in log.epochs)

    def event_count(self) -> int:
        return sum(len(e.times) for log in self.logs.values() for e in log.epochs)


def _admit_log(log: LogState, security: bool, batch: list[Any], positions: list[int] | None, rs: list[Any],
               ts: list[int], newest: int | None, event_ids: list[Any],
               verdicts: list[bool] | None) -> list[bool] | None:
    """One log's events of a batch, in order (``positions`` in the batch, None for all; ``rs``/``ts`` their ids and
    times; ``newest`` the greatest time if known). Returns ``verdicts``, made when the first event is judged
    alone."""

    def judge(k: int) -> None:
        nonlocal verdicts
        i = k if positions is None else positions[k]
        r = rs[k]
        kept = (log.admit_unnumbered(batch[i], ts[k]) if r is None
                else log.admit(r, ts[k], security and event_ids[i] == 1102))
        if verdicts is None:
            verdicts = [True] * len(batch)
        verdicts[i] = kept

    n = len(rs)
    try:
        if rs[0] is None:
            raise TypeError
        gaps = list(map(sub, rs[1:], rs))
        ascending = None if not gaps or min(gaps) > 0 else list(map(gt, gaps, repeat(0)))
    except TypeError:  # events without a record id (exports): one by one
        for k in range(n):
            judge(k)
        return verdicts
    clears: list[int] = []
    if security and 1102 in event_ids:
        ids_here = event_ids if positions is None else list(map(event_ids.__getitem__, positions))
        clears = list(compress(range(n), map(eq, ids_here, repeat(1102))))
    c = 0
    while c < n:
        end, block = log.block_end(rs, ts, ascending, clears, c)
        if block:
            log.append_block(rs[c:end], ts[c:end], gaps[c : end - 1], newest if c == 0 and end == n else None)
            c = end
            continue
        for k in range(c, max(end, c + 1)):
            judge(k)
        c = max(end, c + 1)
    return verdicts


def _positions(keys: list[Any], groups: list[Any]) -> Iterator[list[int] | None]:
    """Per group (distinct key, in order), the positions of its events in ``keys``; None when there is one group."""
    if len(groups) == 1:
        yield None
        return
    if len(groups) <= 8:
        for group in groups:
            yield list(compress(range(len(keys)), map(eq, keys, repeat(group))))
        return
    by_group: dict[Any, list[int]] = {group: [] for group in groups}
    for i, key in enumerate(keys):
        by_group[key].append(i)
    yield from by_group.values()


def _first_id(value: bytes) -> int:
    return int.from_bytes(value[8:16], "little", signed=True)


def iter_partition_records(
    items: Iterable[tuple[bytes, bytes | None]], prefix: bytes
) -> Iterator[tuple[bytes, bytes | None]]:
    """Records of a table whose keys start with ``prefix``, with the prefix removed."""
    n = len(prefix)
    for key, value in items:
        if key.startswith(prefix):
            yield key[n:], value
