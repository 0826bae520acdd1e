"""Per-host batches bounded by event count, estimated bytes and age.

A batch gets its ``batch_id`` (a UUID) when it opens and keeps it for life: every resend of the same batch, to
Kafka or to another collector, carries the same id. The batcher is a pure object: it takes events and a clock
reading and hands back batches that are ready; sending them is someone else's job.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson

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

    def add(self, event: dict[str, Any], size: int, mark: Any) -> None:
        self.events.append(event)
        self.size += size
        if mark is not None:
            self.marks[mark] = self.marks.get(mark, 0) + 1

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

    def as_record(self, agent_id: str) -> dict[str, Any]:
        """The RawEventBatch dict (the schema's field names)."""
        return {
            "host": self.host,
            "batch_id": self.batch_id,
            "sequence": self.sequence,
            "agent_id": agent_id,
            "send_time_us": self.send_time_us,
            "events": self.events,
        }


class Batcher:
    """Groups events by ``computer``; a batch is ready when full (count or bytes) or older than ``max_age``."""

    def __init__(self, max_events: int = 1000, max_bytes: int = 900_000, max_age: float = 1.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.max_events = max_events
        self.max_bytes = max_bytes
        self.max_age = max_age
        self._clock = clock
        self._open: dict[str, OutgoingBatch] = {}
        self._next_sequence = 0

    @property
    def open_events(self) -> int:
        return sum(len(b.events) for b in self._open.values())

    def add(self, event: dict[str, Any], mark: Any = None) -> list[OutgoingBatch]:
        """Add one event; returns the batches this made ready (usually none, at most two)."""
        host = event["computer"]
        size = estimate_size(event)
        ready: list[OutgoingBatch] = []
        batch = self._open.get(host)
        if batch is not None and batch.size + size > self.max_bytes:
            ready.append(self._close(host))
            batch = None
        if batch is None:
            batch = OutgoingBatch(host, str(uuid.uuid4()), self._clock())
            self._open[host] = batch
        batch.add(event, size, mark)
        if len(batch.events) >= self.max_events or batch.size >= self.max_bytes:
            ready.append(self._close(host))
        return ready

    def due(self) -> list[OutgoingBatch]:
        """Batches older than ``max_age``."""
        now = self._clock()
        hosts = [h for h, b in self._open.items() if now - b.opened_at >= self.max_age]
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

