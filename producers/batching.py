"""Per-host batches bounded by event count, estimated bytes and age.

A batch gets its ``batch_id`` (a UUID) when it opens and keeps it for life: every resend of the same batch, to
Kafka or to another collector, carries the same id. The batcher is a pure object: it takes events and a clock
reading and hands back batches that are ready; sending them is someone else's job.

``Batcher`` holds RawEvent dicts; ``EncodedBatcher`` holds events already in Avro (``producers.encoded``, the EVTX
fast path), taken a chunk at a time, and bounds the bytes exactly instead of by estimate.
"""

from __future__ import annotations

import time
import uuid
from bisect import bisect_right
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import orjson

from producers.encoded import EncodedChunk, decode_events, encode_batch
from schemas.codec import encode_raw_batch

# Fixed per-event overhead of the Avro encoding (ints, unions, provenance ids), an upper bound for the estimate.
_EVENT_OVERHEAD = 96
_OPTIONAL_TEXT = ("rendered_message", "user_data_xml", "keywords", "provider_guid", "user_id", "activity_id")


def estimate_size(event: dict[str, Any]) -> int:
    """An upper bound of the event's encoded size, cheap enough to run per event.

    EventData, usually most of an event, is measured as its JSON (one C call instead of a loop over the items):
    UTF-8 like Avro, and each item's JSON punctuation (``{"name":"","value":""}``) is more than Avro spends on two
    unions and two lengths."""
    size = (_EVENT_OVERHEAD + len(orjson.dumps(event["event_data"])) + len(event["provider_name"])
            + len(event["channel"]) + len(event["computer"]))
    for key in _OPTIONAL_TEXT:
        value = event[key]
        if value:
            size += len(value)
    return size


@dataclass(eq=False)
class OutgoingBatch:
    """A RawEventBatch in the making, plus what delivering it makes durable (``marks``: progress tokens)."""

    host: str
    batch_id: str
    opened_at: float
    events: list[dict[str, Any]] = field(default_factory=list)
    size: int = 0
    marks: dict[Any, int] = field(default_factory=dict)
    sequence: int = -1
    send_time_us: int = 0
    attempts: int = 0
    # Set when the batch was split (too large for the broker): the halves report to the original.
    parent: OutgoingBatch | None = None
    parts_left: int = 0
    # Events the batcher had taken when this batch opened (for the read-lag bound).
    opened_after: int = 0
    # Events already in Avro (EncodedBatcher): slices of chunks, concatenated in order, and how many events.
    encoded: list[memoryview] | None = None
    encoded_count: int = 0

    @property
    def event_count(self) -> int:
        return self.encoded_count if self.encoded is not None else len(self.events)

    def add(self, event: dict[str, Any], size: int, mark: Any) -> None:
        self.events.append(event)
        self.size += size
        self.count_mark(mark, 1)

    def count_mark(self, mark: Any, events: int) -> None:
        """``events`` more events of this batch are counted under progress token ``mark`` (None: untracked)."""
        if mark is not None:
            self.marks[mark] = self.marks.get(mark, 0) + events

    def completed_part(self) -> OutgoingBatch | None:
        """This batch was delivered: the batch whose delivery that completes (itself, or the split original)."""
        batch = self
        while batch.parent is not None:
            parent = batch.parent
            parent.parts_left -= 1
            if parent.parts_left > 0:
                return None
            batch = parent
        return batch

    def envelope(self, agent_id: str) -> dict[str, Any]:
        """The RawEventBatch fields other than ``events``."""
        return {
            "host": self.host,
            "batch_id": self.batch_id,
            "sequence": self.sequence,
            "agent_id": agent_id,
            "send_time_us": self.send_time_us,
        }

    def as_record(self, agent_id: str) -> dict[str, Any]:
        """The RawEventBatch dict (the schema's field names)."""
        return {**self.envelope(agent_id), "events": self.event_dicts()}

    def event_dicts(self) -> list[dict[str, Any]]:
        """The events as RawEvent dicts (decoded when they are held in Avro)."""
        if self.encoded is None:
            return self.events
        return decode_events(self.encoded_count, self.encoded)

    def encode(self, agent_id: str) -> bytes:
        """The message value: the RawEventBatch in the codec's wire format."""
        if self.encoded is None:
            return encode_raw_batch(self.as_record(agent_id))
        return encode_batch(self.envelope(agent_id), self.encoded_count, self.encoded)


# An open batch holds back the checkpoint of every source with an event in it: events of a rare host (a second
# computer in one log) would otherwise keep the sources' checkpoints for up to ``max_age`` while the rest is read,
# sent and acknowledged, and a crash in that time resends all of it. So a batch is also ready once this many
# batches' worth of events were taken after it opened.
LAG_BATCHES = 10


class Batcher:
    """Groups events by ``computer``; a batch is ready when full (count or bytes), older than ``max_age``, or
    ``max_lag`` events (default ``LAG_BATCHES`` full batches) were taken after it opened."""

    def __init__(self, max_events: int = 1000, max_bytes: int = 900_000, max_age: float = 1.0,
                 clock: Callable[[], float] = time.monotonic, max_lag: int | None = None) -> None:
        self.max_events = max_events
        self.max_bytes = max_bytes
        self.max_age = max_age
        self.max_lag = max_lag if max_lag is not None else LAG_BATCHES * max_events
        self._clock = clock
        self._open: dict[str, OutgoingBatch] = {}
        self._next_sequence = 0
        self._taken = 0

    @property
    def open_events(self) -> int:
        return sum(b.event_count for b in self._open.values())

    def add(self, event: dict[str, Any], mark: Any = None) -> list[OutgoingBatch]:
        """Add one event; returns the batches this made ready (usually none): its host's batch when full, and any
        batch of another host that reached the lag bound."""
        host = event["computer"]
        size = estimate_size(event)
        ready: list[OutgoingBatch] = []
        batch = self._open.get(host)
        if batch is not None and batch.size + size > self.max_bytes:
            ready.append(self._close(host))
            batch = None
        if batch is None:
            batch = self._start(host)
        batch.add(event, size, mark)
        self._taken += 1
        if len(batch.events) >= self.max_events or batch.size >= self.max_bytes:
            ready.append(self._close(host))
        ready.extend(self._lagging())
        return ready

    def due(self) -> list[OutgoingBatch]:
        """Batches older than ``max_age`` (the lag bound is applied as events are taken)."""
        now = self._clock()
        return [self._close(h) for h in [h for h, b in self._open.items() if now - b.opened_at >= self.max_age]]

    def _start(self, host: str, encoded: list[memoryview] | None = None) -> OutgoingBatch:
        batch = self._open[host] = OutgoingBatch(host, str(uuid.uuid4()), self._clock(), opened_after=self._taken,
                                                 encoded=encoded)
        return batch

    def _lagging(self) -> list[OutgoingBatch]:
        """Open batches with ``max_lag`` events taken since they opened (their own first included). ``_open``
        keeps the order batches opened in, so these are a prefix of it: usually one look at the oldest."""
        lagging = self._taken - self.max_lag
        hosts = []
        for host, batch in self._open.items():
            if batch.opened_after > lagging:
                break
            hosts.append(host)
        return [self._close(h) for h in hosts]

    def drain(self) -> list[OutgoingBatch]:
        """Every open batch, e.g. at a checkpoint or at the end of the input."""
        return [self._close(h) for h in list(self._open)]

    def _close(self, host: str) -> OutgoingBatch:
        batch = self._open.pop(host)
        batch.sequence = self._next_sequence
        self._next_sequence += 1
        return batch

    def resume_sequence(self, next_sequence: int) -> None:
        self._next_sequence = next_sequence

    @property
    def next_sequence(self) -> int:
        return self._next_sequence


class EncodedBatcher(Batcher):
    """``Batcher`` for events already in Avro: whole chunks go in at once (a slice per batch they reach, never a
    step per event), and the byte bound counts the exact encoded size."""

    def add(self, event: dict[str, Any], mark: Any = None) -> list[OutgoingBatch]:
        """One RawEvent dict, encoded here by the codec (raises ``schemas.codec.EncodeError`` if it does not fit)."""
        return list(self.add_chunk(EncodedChunk.of_event(event), None if mark is None else lambda _i, _n: mark))

    def add_chunk(self, chunk: EncodedChunk, mark: Callable[[int, int], Any] | None = None
                  ) -> Iterator[OutgoingBatch]:
        """Every event of ``chunk``, in order, into its host's batch; yields each batch as it becomes ready, before
        the next events are placed. ``mark(last_index, count)``, asked for each run of ``count`` consecutive
        events (up to index ``last_index`` of the chunk) that go to one batch, gives the progress token the batch
        counts them under: a caller that seals a batch's tokens when it gets it starts new ones for what follows."""
        ends, runs, view = chunk.ends, chunk.runs, memoryview(chunk.data)
        for index, (host, start) in enumerate(runs):
            stop = runs[index + 1][1] if index + 1 < len(runs) else len(ends)
            while start < stop:
                batch = self._open.get(host) or self._start(host, encoded=[])
                assert batch.encoded is not None
                begin = ends[start - 1] if start else 0
                take = min(stop - start, self.max_events - batch.encoded_count)
                room = self.max_bytes - batch.size
                if ends[start + take - 1] - begin > room:
                    take = bisect_right(ends, begin + room, start, start + take) - start  # those that fit
                    if take == 0:
                        if batch.encoded_count:
                            yield self._close(host)
                            continue
                        take = 1  # one event over the bound goes alone
                end = ends[start + take - 1]
                batch.encoded.append(view[begin:end])
                batch.encoded_count += take
                batch.size += end - begin
                if mark is not None:
                    batch.count_mark(mark(start + take - 1, take), take)
                start += take
                self._taken += take
                if batch.encoded_count >= self.max_events or batch.size >= self.max_bytes:
                    yield self._close(host)
                yield from self._lagging()  # another host's batch may have waited too long meanwhile
