"""The host producer as a lifecycle stage: read sources, filter, batch per host, send, checkpoint after delivery."""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Protocol, cast

import orjson
from opentelemetry import metrics

from producers import encoded
from producers.batching import Batcher, EncodedBatcher, OutgoingBatch
from producers.checkpoint import ProducerState, ProgressTracker, Segment, load_state, save_state
from producers.encoded import EncodedChunk
from schemas.codec import EncodeError
from secstream.config import Settings
from secstream.lifecycle import StageState

log = logging.getLogger(__name__)
_meter = metrics.get_meter("secstream.producer")
_events_read = _meter.create_counter("secstream.producer.events_read")
_events_filtered = _meter.create_counter("secstream.producer.events_filtered")
_read_issues = _meter.create_counter("secstream.producer.read_issues")

READ_CHUNK = 1000  # events per run_once (and per chunk of an encoded source)


class EventSource(Protocol):
    """A file source (``producers.adapters.sources.Source``) or a live channel (``LiveEventLogSource``)."""

    key: str

    def read(self, resume: int | None, agent_id: str = "",
             on_issue: Callable[[str, bytes | None], None] | None = None,
             follow: bool = False) -> Iterator[tuple[dict[str, Any], int]]: ...


class EncodedSource(EventSource, Protocol):
    """A source that can also hand over its events a chunk at a time, already in Avro (EVTX files)."""

    reads_encoded: bool

    def read_encoded(self, resume: int | None, agent_id: str = "",
                     on_issue: Callable[[str, bytes | None], None] | None = None,
                     chunk_records: int = READ_CHUNK) -> Iterator[tuple[EncodedChunk, int]]: ...


class BatchSink(Protocol):
    """Where batches go: Kafka (``KafkaBatchSink``) or collectors (``CollectorSink``)."""

    in_flight_batches: int

    def send(self, batch: OutgoingBatch, wait: Callable[[], bool] | None = None) -> None: ...

    def dead_letter(self, reason: str, raw: bytes | None, source: str) -> None: ...

    def poll(self, timeout: float = 0.0) -> None: ...

    def flush(self, timeout: float) -> bool: ...

    def close(self, timeout: float = 5.0) -> None: ...


SinkFactory = Callable[[str, Callable[[OutgoingBatch], None]], BatchSink]


def default_agent_id(settings: Settings) -> str:
    return settings.producer.agent_id or socket.gethostname()


class ProducerStage:
    """``secstream produce``: one pass over the sources (or ``follow`` for more), resumable after any crash."""

    def __init__(self, settings: Settings, sources: Sequence[EventSource], sink_factory: SinkFactory,
                 follow: bool = False, stop: threading.Event | None = None) -> None:
        self.settings = settings
        self.sources = sources
        self.follow = follow
        self.stop = stop or threading.Event()
        self.state = StageState("producer")
        self.agent_id = default_agent_id(settings)
        self._sink_factory = sink_factory
        self.events_read = 0
        self.events_sent = 0
        self.events_delivered = 0
        self.issues = 0
        self.sources_done = 0
        self._keep: Callable[[dict[str, Any]], bool] | None = None
        self._last_save = 0.0
        self._saved: ProducerState | None = None

    # ------------------------------------------------------------ lifecycle

    def start(self) -> None:
        p = self.settings.producer
        self._saved = load_state(p.state_file)
        self.tracker = ProgressTracker(self._saved.positions)
        self._read_positions: dict[str, int] = dict(self._saved.positions)
        # EVTX input and no event-set filter to apply here: EVTX events go from the parser to Avro in C, a chunk
        # at a time, with no dict per event (producers.encoded); events of other sources are encoded one by one
        # into the same batches. Otherwise (or with SECSTREAM_NATIVE_EVTX=0) the batches hold RawEvent dicts.
        self.encoded = (not p.source_filter and any(getattr(s, "reads_encoded", False) for s in self.sources)
                        and encoded.available())
        self.batcher = (EncodedBatcher if self.encoded else Batcher)(
            p.batch_max_events, p.batch_max_bytes, p.batch_max_age_seconds)
        self.batcher.resume_sequence(self._saved.next_sequence)
        if p.source_filter:
            from streams.filtering import RuleSet  # the stream stage's own rules, compiled the same way

            rules = RuleSet.compile(self.settings.rules)
            self._keep = lambda event: rules.rule_for(event["computer"]).keep(event)
        self.sink = self._sink_factory(self.agent_id, self._on_delivered)
        self._events: Iterator[tuple[str, dict[str, Any] | EncodedChunk, int]] | None = self._read_all()
        log.info("producer %s: %d sources, resuming %d of them from saved positions", self.agent_id,
                 len(self.sources), sum(1 for s in self.sources if s.key in self._saved.positions))

    def run_once(self) -> bool:
        if self._events is not None:
            self._read_chunk()
        for batch in self.batcher.due():
            self._send(batch)
        self.sink.poll(0)
        self._save_if_changed(force=False)
        if self._events is not None:
            return True
        # Input exhausted for now.
        for batch in self.batcher.drain():
            self._send(batch)
        if self.follow:
            self._wait(self.settings.producer.follow_interval_seconds)
            self._events = self._read_all()
            return True
        if self.sink.in_flight_batches:
            self._wait(0.2)
            return True
        self._save_if_changed(force=True)
        return False

    def flush(self) -> None:
        """At a periodic checkpoint: save what is delivered (never blocks on Kafka). When stopping: also send the
        open batches and wait a while for their acknowledgement, so a clean stop resends nothing."""
        if self.stop.is_set():
            for batch in self.batcher.drain():
                self._send(batch)
            if not self.sink.flush(timeout=10.0):
                log.warning("stopping with %d batches unacknowledged; they are sent again on restart",
                            self.sink.in_flight_batches)
        else:
            self.sink.poll(0)
        self._save_if_changed(force=True)

    def close(self) -> None:
        try:
            self.sink.close(timeout=5.0)
        finally:
            self._save_if_changed(force=True)

    # ------------------------------------------------------------ work

    def _read_all(self) -> Iterator[tuple[str, dict[str, Any] | EncodedChunk, int]]:
        for source in self.sources:
            resume = self._read_positions.get(source.key)
            items: Iterator[tuple[dict[str, Any], int]] | Iterator[tuple[EncodedChunk, int]]
            if self.encoded and getattr(source, "reads_encoded", False):
                items = cast(EncodedSource, source).read_encoded(resume, self.agent_id, self._on_issue, READ_CHUNK)
            elif self.encoded:
                items = self._encode_each(source.key, source.read(resume, self.agent_id, self._on_issue,
                                                                  follow=self.follow))
            else:
                items = source.read(resume, self.agent_id, self._on_issue, follow=self.follow)
            for item, position in items:
                yield source.key, item, position
            self.tracker.source_done(source.key)
            if not self.follow:
                self.sources_done += 1

    def _encode_each(self, key: str, events: Iterator[tuple[dict[str, Any], int]]
                     ) -> Iterator[tuple[EncodedChunk, int]]:
        """Events of a source without a chunked reader, each encoded by the codec. One that does not fit the
        schema is reported (dead letter) and not sent, like an unreadable record."""
        for event, position in events:
            try:
                chunk = EncodedChunk.of_event(event)
            except EncodeError as exc:
                self._on_issue(f"{key}: event does not fit the RawEvent schema ({exc})",
                               orjson.dumps(event, default=str))
                continue
            yield chunk, position

    def _read_chunk(self) -> None:
        assert self._events is not None
        keep = self._keep
        tracker, batcher = self.tracker, self.batcher
        read = filtered = 0
        for key, event, position in self._events:
            self._read_positions[key] = position
            if isinstance(event, EncodedChunk):  # consecutive events of one source, all to be sent
                read += len(event)
                first = position - len(event) + 1

                def segment_for(last_index: int, count: int, key: str = key, first: int = first) -> Segment:
                    return tracker.read_many(key, first + last_index, count)

                # Each batch is sent (and its segments sealed) as soon as it is full, before the events after it
                # are marked: the checkpoint moves batch by batch, as on the dict path.
                for batch in cast(EncodedBatcher, batcher).add_chunk(event, segment_for):
                    self._send(batch)
                if read >= READ_CHUNK or self.stop.is_set():
                    break
                continue
            read += 1
            wanted = keep is None or keep(event)
            mark = tracker.read(key, position, sent=wanted)
            if wanted:
                for batch in batcher.add(event, mark):
                    self._send(batch)
            else:
                filtered += 1
            if read >= READ_CHUNK or self.stop.is_set():
                break
        else:
            self._events = None
        self.events_read += read
        _events_read.add(read)
        if filtered:
            _events_filtered.add(filtered)
        self.state.progressed()

    def _send(self, batch: OutgoingBatch) -> None:
        self.tracker.seal(batch.marks)
        self.events_sent += batch.event_count
        self.sink.send(batch, wait=self._keep_waiting)

    def _keep_waiting(self) -> bool:
        self.state.detail = "waiting for the destination to acknowledge (backpressure)"
        return not self.stop.is_set()

    def _on_delivered(self, batch: OutgoingBatch) -> None:
        self.events_delivered += batch.event_count
        self.tracker.delivered(batch.marks)
        self.state.detail = "running"
        self.state.progressed()
        self._save_if_changed(force=False)

    def _on_issue(self, reason: str, raw: bytes | None) -> None:
        self.issues += 1
        _read_issues.add(1)
        log.warning("unreadable input: %s", reason)
        self.sink.dead_letter(reason, raw, reason.partition(": ")[0])

    def _wait(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while not self.stop.is_set() and time.monotonic() < deadline:
            self.sink.poll(min(0.1, max(0.0, deadline - time.monotonic())))

    def _save_if_changed(self, force: bool) -> None:
        now = time.monotonic()
        interval = self.settings.producer.checkpoint_interval_seconds
        if not self.tracker.changed or (not force and now - self._last_save < interval):
            return
        assert self._saved is not None
        self._saved.positions = dict(self.tracker.committed)
        self._saved.next_sequence = self.batcher.next_sequence
        save_state(self.settings.producer.state_file, self._saved)
        self.tracker.changed = False
        self._last_save = now
