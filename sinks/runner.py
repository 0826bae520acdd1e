"""``SinkStage``: one destination's consumer group, from the normalized topic into the workspace.

Per poll: decode each ``SecurityEventBatch``, register its rows with the offset tracker, pack them into requests
and hand full requests to a bounded thread pool that uploads them (``sinks.retry.Deliverer``). A row is resolved
when the workspace accepted it (204) or when Kafka acknowledged its dead-letter record. As soon as a partition's
done prefix grows, its delivery-log record is produced, and once Kafka acknowledges that record the new offset is
committed (asynchronously). Each commit also carries, in its metadata, which rows of the messages after the
committed offset are already done (``sinks.row_progress``), and a request that finishes triggers such a commit
(rate-limited by ``sink.progress_commit_interval_ms``). So after a crash a restarted sink sends again only the rows
of requests that were in flight (or finished within that interval): they carry the same ``EventOriginId``.
``flush`` (each checkpoint) also sends open partial requests and waits for Kafka acknowledgements, then commits
synchronously; giving up partitions (rebalance) or stopping first waits for the requests in flight.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections import deque
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, Producer, TopicPartition
from opentelemetry import metrics, trace

from schemas.codec import DecodeError, decode_security_batch
from secstream.config import DestinationSettings, Settings
from secstream.kafka import consumer_config, producer_config
from secstream.kafka_metrics import KafkaClientStats
from secstream.lifecycle import StageState, run_stage, stop_on_signals
from secstream.source_position import parse_source
from secstream.status import StatusRecorder
from secstream.telemetry import batch_span
from sinks import commit_metadata, dead_letter
from sinks.checkpoint import DeliveredRange, OffsetTracker, delivery_record
from sinks.heartbeat import HeartbeatWriter
from sinks.reemission import ReemissionGuard
from sinks.request_builder import Request, RequestBuilder, Segment
from sinks.retry import Abandoned, Backoff, Deliverer, FatalSinkError, Placed, Target
from sinks.row_json import RowBatch, RowDecoder, serialise_rows
from sinks.row_progress import SavedProgress, covered, decode_progress, missing
from sinks.service import IngestionService

log = logging.getLogger(__name__)
meter = metrics.get_meter("secstream.sink")
tracer = trace.get_tracer("secstream.sink")

ROWS_ACCEPTED = meter.create_counter("secstream.sink.rows_accepted", unit="{row}",
                                     description="rows the workspace accepted (204)")
ROWS_DEAD_LETTERED = meter.create_counter("secstream.sink.rows_dead_lettered", unit="{row}",
                                          description="rows written to the dead-letter topic")
REQUESTS = meter.create_counter("secstream.sink.requests", unit="{request}",
                                description="upload attempts, by HTTP status (or error class)")
THROTTLED = meter.create_counter("secstream.sink.throttled", unit="{request}", description="429 answers")
SERVER_ERRORS = meter.create_counter("secstream.sink.server_errors", unit="{request}", description="5xx answers")
TRUNCATED = meter.create_counter("secstream.sink.values_truncated", unit="{value}",
                                 description="values cut to the 64 KB field limit")
BATCHES = meter.create_counter("secstream.sink.batches", unit="{message}", description="Kafka messages consumed")
UPLOAD_LATENCY = meter.create_histogram("secstream.sink.upload_latency", unit="s",
                                        description="one upload attempt, request to response")
REQUEST_BYTES = meter.create_histogram("secstream.sink.request_bytes", unit="By",
                                       description="gzip body size of accepted requests")
EVENTS_IN = meter.create_counter("secstream.sink.events_in", unit="{row}", description="rows consumed from Kafka")
BATCH_EVENTS = meter.create_histogram("secstream.sink.batch_events", unit="{row}", description="rows per Kafka message")
ROWS_EARLIER = meter.create_counter("secstream.sink.rows_delivered_earlier", unit="{row}",
                                    description="rows not sent again after a restart or partition move: the "
                                                "previous owner had delivered them (commit metadata)")
REEMISSIONS = meter.create_counter("secstream.sink.reemissions_skipped", unit="{message}",
                                   description="messages skipped as the stream stage's re-emission of output "
                                               "already read")


def group_id(settings: Settings, destination: DestinationSettings) -> str:
    return f"{settings.sink.group_prefix}{destination.name}"


class SinkStage:
    """Delivers the normalized topic to one destination (its own consumer group and progress)."""

    def __init__(self, settings: Settings, destination: DestinationSettings, *,
                 idle_exit_seconds: float | None = None, service: IngestionService | None = None) -> None:
        self.settings = settings
        self.destination = destination
        self.topic = settings.topics.normalized
        self.idle_exit_seconds = idle_exit_seconds
        self.state = StageState(name=f"sink-{destination.name}")
        self._service = service
        self._stopping = threading.Event()
        self._in_flight: set[Future[list[Placed]]] = set()
        # Parts placed by pool threads, resolved by the main thread (a split request's parts one by one).
        self._placed: deque[Placed] = deque()
        self._tracker = OffsetTracker()
        dcrs = len(destination.dcr_immutable_ids)
        self._builder = RequestBuilder(
            settings.sink.max_request_bytes, settings.sink.max_field_bytes,
            shard_of=(lambda computer: _stable_hash(computer) % dcrs) if destination.sharding == "computer" else None,
        )
        # Rows go from the message value straight to their JSON (sinks.row_json) unless a subclass derives them.
        self._row_decoder = RowDecoder(settings.sink.max_field_bytes)
        self._rows_from_value = type(self)._decode is SinkStage._decode
        self._delivery_errors: list[str] = []
        self._failed: FatalSinkError | None = None
        self._to_commit: dict[int, int] = {}  # partition -> offset whose delivery-log record Kafka acknowledged
        self._backlog: deque[Message] = deque()  # polled, not yet taken (waiting for room in the pool)
        self._last_activity = time.monotonic()
        self._attrs = {"destination": destination.name}
        self.log_fields: dict[str, Any] = {}  # added to every delivery-log record (a replay names its rules)
        self.consumer: Consumer | None = None
        self.producer: Producer | None = None
        self.totals = {"rows_accepted": 0, "rows_dead_lettered": 0, "requests": 0, "messages": 0,
                       "reemissions_skipped": 0, "rows_delivered_earlier": 0}
        # Row-level progress in the commit metadata (sinks.row_progress); a replay (no group progress) turns it off.
        self.row_progress = settings.sink.row_progress
        # Per partition taken from since assignment: what its last owner recorded as done (None: nothing, or off).
        self._saved: dict[int, SavedProgress | None] = {}
        self._commit_base: dict[int, int] = {}  # per partition: the offset committed (or started from)
        self._progress_dirty: set[int] = set()  # partitions whose row progress changed since their last commit
        self._last_progress_commit = 0.0
        # The live group consumer skips the stream stage's re-emissions (sinks.reemission); None = deliver all.
        self.reemissions: ReemissionGuard | None = None
        if settings.sink.reemission_window_seconds > 0:
            self.reemissions = ReemissionGuard(self.topic, settings.sink.reemission_window_seconds,
                                               self._tail_consumer, settings.sink.request_timeout_seconds)
        self._reemissions_logged = 0
        # Per-Computer summaries for `secstream status` (and optional Heartbeat-style rows).
        self.status = StatusRecorder(settings, destination.name, HeartbeatWriter.for_destination(settings, destination))
        self._consumer_stats, self._producer_stats = KafkaClientStats("sink"), KafkaClientStats("sink")

    # ------------------------------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        sink = self.settings.sink
        self.service = self._service or IngestionService(self.destination, sink)
        self.producer = Producer(producer_config(self.settings.kafka, **self._producer_stats.client_options()))
        self.consumer = self._connect()
        self._executor = ThreadPoolExecutor(sink.max_in_flight, thread_name_prefix=f"sink-{self.destination.name}")
        self._deliverer = Deliverer(
            send=self.service.send, target_for=self._target, max_wire_bytes=sink.max_request_bytes,
            gzip_level=sink.gzip_level, stop=self._stopping,
            backoff=Backoff(sink.retry_backoff_seconds, sink.retry_backoff_max_seconds), on_attempt=self._on_attempt,
        )
        self._last_activity = time.monotonic()

    def _connect(self) -> Consumer:
        """The consumer, subscribed as this destination's group (a replay assigns a bounded range instead)."""
        sink = self.settings.sink
        overrides: dict[str, Any] = {"max.poll.interval.ms": sink.max_poll_interval_ms, "on_commit": self._on_commit}
        if sink.group_instance_id:
            overrides["group.instance.id"] = sink.group_instance_id
        overrides.update(self._consumer_stats.client_options())  # consumer lag gauges
        consumer = Consumer(consumer_config(self.settings.kafka, group_id(self.settings, self.destination),
                                            **overrides))
        consumer.subscribe([self.topic], on_assign=self._on_assign, on_revoke=self._on_revoke, on_lost=self._on_lost)
        return consumer

    def _tail_consumer(self) -> Consumer:
        """A group-less reader for rebuilding re-emission marks (never commits)."""
        return Consumer(consumer_config(self.settings.kafka, group_id(self.settings, self.destination) + "-marks"))

    def run_once(self) -> bool:
        assert self.consumer is not None
        self._harvest(block=False)
        if self._full():
            self._harvest(block=True, timeout=0.5)  # back-pressure: take nothing while the pool is full
            self._progress()
            return True
        if not self._backlog:
            # While uploads are under way, wait briefly: their answers are resolved and committed between polls.
            wait_seconds = 0.02 if self._in_flight else 0.2
            self._backlog.extend(self.consumer.consume(self.settings.sink.poll_batch, timeout=wait_seconds))
        taken = 0
        # Messages are taken only while there is room, so requests never queue behind the pool: the committed
        # offset trails delivery by at most the requests in flight.
        while self._backlog and not self._full():
            msg = self._backlog.popleft()
            error = msg.error()
            if error is not None:
                self._on_kafka_error(error)
                continue
            self._take(msg)
            taken += 1
        if taken:
            self._last_activity = time.monotonic()
            BATCHES.add(taken, self._attrs)
            self.totals["messages"] += taken
            self.state.progressed()
        elif not self._backlog:
            self._submit_all(self._builder.drain())  # nothing more is coming right now: send what is open
        self._progress()
        if self._in_flight or self._tracker.pending_messages or self._backlog:
            self._last_activity = time.monotonic()
        return not (self.idle_exit_seconds is not None
                    and time.monotonic() - self._last_activity >= self.idle_exit_seconds)

    def flush(self) -> None:
        """Send open requests, collect finished ones, make Kafka records durable, commit synchronously."""
        self._submit_all(self._builder.drain())
        self._harvest(block=False)
        self._checkpoint()
        self.status.emit(self.producer)
        self._log_reemissions()

    def _log_reemissions(self) -> None:
        skipped = self.totals["reemissions_skipped"]
        if skipped != self._reemissions_logged:
            log.info("%s: %d messages skipped so far as re-emissions of output already read (the stream stage "
                     "wrote them again after a restart)", self.destination.name, skipped)
            self._reemissions_logged = skipped

    def close(self) -> None:
        """Wait for the requests in flight (bounded), commit what they finished, release the clients."""
        try:
            if self.consumer is not None and self._failed is None:
                self._drain(timeout=self.settings.sink.request_timeout_seconds)
            if self.consumer is not None and not self._delivery_errors:
                self._checkpoint()
        finally:
            self._stopping.set()  # ends any retry still waiting; its rows stay uncommitted and are re-sent
            if hasattr(self, "_executor"):
                self._executor.shutdown(wait=True, cancel_futures=True)
            if self.consumer is not None:
                self.consumer.close()
            if self.producer is not None:
                self.status.emit(self.producer, force=True)
                self.producer.flush(10)
            self._consumer_stats.close()
            self._producer_stats.close()
            if hasattr(self, "service"):
                self.service.close()

    # ------------------------------------------------------------------------------------------ consuming

    def _take(self, msg: Message) -> None:
        partition, offset = msg.partition(), msg.offset()
        assert partition is not None and offset is not None
        metadata = self._restore(partition, offset) if partition not in self._saved else None
        saved = self._saved[partition]
        if self.reemissions is not None and not self.reemissions.admit(msg, metadata):
            self._skip_reemission(msg, partition, offset)
            return
        try:
            batch = self._decode_rows(msg)
        except DecodeError as exc:
            done = saved.done(offset, 1) if saved is not None else []
            if done:
                self._register_earlier(partition, offset, 1, done)  # its dead letter was written
                return
            self._tracker.register(partition, offset, 1)  # done when its dead-letter record is acknowledged
            self._dead_letter(*dead_letter.undecodable(self.destination.name, self.topic, partition, offset,
                                                       msg.value(), str(exc)), [Segment(partition, offset, 1)], rows=0)
            return
        rows, computer = batch.rows, batch.computer
        EVENTS_IN.add(len(rows), self._attrs)
        BATCH_EVENTS.record(len(rows), self._attrs)
        done = saved.done(offset, len(rows)) if saved is not None else []
        if not done:
            self._tracker.register(partition, offset, len(rows))
            self.status.took(partition, offset, computer, batch.status_rows)
            self._pack(partition, offset, batch, 0, len(rows), msg.headers())
            return
        self._register_earlier(partition, offset, len(rows), done)
        to_send = missing(done, len(rows))
        status_rows = batch.status_rows
        self.status.took(partition, offset, computer, [row for a, b in to_send for row in status_rows[a:b]])
        for start, end in to_send:
            self._pack(partition, offset, batch, start, end, msg.headers())

    def _pack(self, partition: int, offset: int, batch: RowBatch, start: int, end: int, headers: Any) -> None:
        """Rows ``start`` to ``end`` of the message at (partition, offset) into requests."""
        rows = batch.rows if start == 0 and end == len(batch.rows) else batch.rows[start:end]
        packed = self._builder.add_json(partition, offset, batch.computer, rows, headers, start)
        truncated = batch.truncated_values(start, end) if batch.truncated else 0
        if truncated:
            TRUNCATED.add(truncated, self._attrs)
            log.warning("%s/%d/%d (%s): %d values over %d bytes truncated", self.topic, partition, offset,
                        batch.computer, truncated, self.settings.sink.max_field_bytes)
        for rejected in packed.rejected:
            self._dead_letter(*dead_letter.oversize_row(self.destination.name, self.topic, rejected.segment,
                                                        rejected.row, rejected.reason, self.settings.sink.gzip_level),
                              [rejected.segment])
        self._submit_all(packed.requests)

    def _restore(self, partition: int, offset: int) -> str | None:
        """At the partition's first message since assignment (which is at its committed offset): read that
        commit's metadata once, keep the rows its previous owner recorded as done, and return it (for the
        re-emission marks). None when there is none, it is not readable, or neither part is on."""
        self._commit_base[partition] = offset
        self._saved[partition] = None
        if not self.row_progress and self.reemissions is None:
            return None
        assert self.consumer is not None
        try:
            committed = self.consumer.committed([TopicPartition(self.topic, partition)], timeout=30)[0]
        except KafkaException as exc:
            log.warning("%s/%d: committed offset not readable (%s); rows of partly delivered messages are sent "
                        "again, re-emission marks are rebuilt by reading back", self.topic, partition, exc)
            return None
        metadata: str | None = committed.metadata if committed.offset >= 0 else None
        saved = decode_progress(metadata) if self.row_progress else None
        self._saved[partition] = saved
        if saved is not None:
            log.info("%s/%d: from offset %d, rows the previous owner delivered are not sent again (done "
                     "through offset %s, partly done messages %s)", self.topic, partition, offset,
                     saved.through, sorted(saved.rows) or "none")
        return metadata

    def _register_earlier(self, partition: int, offset: int, rows: int, done: list[tuple[int, int]]) -> None:
        """A message some of whose rows (``done``) were delivered before the last restart: only the rest is sent."""
        self._tracker.register(partition, offset, rows, done)
        earlier = covered(done)
        self.totals["rows_delivered_earlier"] += earlier
        ROWS_EARLIER.add(earlier, self._attrs)
        log.debug("%s/%d/%d: %d of %d rows already delivered before the restart", self.topic, partition, offset,
                  earlier, rows)

    def _skip_reemission(self, msg: Message, partition: int, offset: int) -> None:
        """Done at once, never decoded or sent: its rows were read from the original."""
        self._tracker.register(partition, offset, 0)
        self.totals["reemissions_skipped"] += 1
        REEMISSIONS.add(1, self._attrs)
        if log.isEnabledFor(logging.DEBUG):
            log.debug("%s: %s/%d/%d skipped: re-emission of %s", self.destination.name, self.topic, partition,
                      offset, parse_source(msg.headers()))

    def _decode_rows(self, msg: Message) -> RowBatch:
        """The message's rows as JSON: straight from the value, unless a subclass derives rows (``_decode``)."""
        if self._rows_from_value:
            return self._row_decoder.decode(msg.value())  # type: ignore[arg-type]
        return serialise_rows(self._decode(msg), self.settings.sink.max_field_bytes)

    def _decode(self, msg: Message) -> dict[str, Any]:
        """The message as a SecurityEventBatch (``computer``, ``rows``); a replay of raw events derives it."""
        return decode_security_batch(msg.value())  # type: ignore[arg-type]

    def _on_kafka_error(self, error: KafkaError) -> None:
        if error.code() == KafkaError._PARTITION_EOF:
            return
        if error.fatal():
            raise FatalSinkError(f"Kafka consumer: {error.str()}")
        log.warning("Kafka consumer: %s", error.str())

    # ------------------------------------------------------------------------------------------ uploading

    def _full(self) -> bool:
        return len(self._in_flight) >= self.settings.sink.max_in_flight

    def _submit_all(self, requests: list[Request]) -> None:
        for request in requests:
            dcr = self.service.choose_dcr(request.shard)
            self._in_flight.add(self._executor.submit(self._deliver, request, dcr))

    def _deliver(self, request: Request, dcr: str) -> list[Placed]:
        """In a pool thread: one request, until its rows are placed, in a span continuing the batch's trace."""
        attributes = {"secstream.destination": self.destination.name, "secstream.dcr": dcr,
                      "secstream.rows": request.row_count}
        with batch_span(tracer, "sink.request", request.trace_headers, attributes) as span:
            placed = self._deliverer.deliver(request, dcr, self._placed.append)
            span.set_attribute("secstream.attempts", sum(p.attempts for p in placed))
            span.set_attribute("secstream.rows_dead_lettered",
                               sum(p.request.row_count for p in placed if p.dead_letter))
            return placed

    def _harvest(self, block: bool, timeout: float | None = None) -> None:
        """Resolve the parts placed so far (also those of requests still under way) and collect finished requests.
        A fatal error is raised once; while closing it is only logged."""
        done: set[Future[list[Placed]]] = set()
        if self._in_flight:
            if block:
                done, _ = wait(self._in_flight, timeout=timeout, return_when=FIRST_COMPLETED)
            else:
                done = {f for f in self._in_flight if f.done()}
        while self._placed:  # every part of a finished request is in here by now
            self._resolve(self._placed.popleft())
        for future in done:
            self._in_flight.discard(future)
            try:
                future.result()
            except Abandoned:
                continue
            except FatalSinkError as exc:
                if self._failed is not None:
                    log.debug("%s: also failed: %s", self.destination.name, exc)
                    continue
                self._failed = exc
                raise

    def _resolve(self, placed: Placed) -> None:
        rows = placed.request.row_count
        self.totals["requests"] += 1
        if placed.dead_letter is None:
            self._tracker.accepted(placed.request.segments)
            self._progress_dirty.update(s.partition for s in placed.request.segments)
            self.status.resolved(placed.request.segments, accepted=True)
            ROWS_ACCEPTED.add(rows, self._attrs)
            REQUEST_BYTES.record(len(placed.body), self._attrs)
            self.totals["rows_accepted"] += rows
            return
        d = placed.dead_letter
        log.warning("%s: %d rows dead-lettered: %s %s %s", self.destination.name, rows, d.status, d.code, d.message)
        self._dead_letter(*dead_letter.rejected_request(
            self.destination.name, self.topic, placed.request.segments, placed.body, status=d.status, code=d.code,
            message=d.message, dcr=placed.dcr, stream=self.destination.stream_name, request_id=placed.request_id,
        ), placed.request.segments)

    def _drain(self, timeout: float) -> None:
        """Send open requests and wait until none is in flight (or ``timeout`` passes)."""
        self._submit_all(self._builder.drain())
        deadline = time.monotonic() + timeout
        while self._in_flight and time.monotonic() < deadline:
            self._harvest(block=True, timeout=max(0.0, deadline - time.monotonic()))

    # ------------------------------------------------------------------------------------------ progress

    def _dead_letter(self, value: bytes, headers: dead_letter.Headers, segments: list[Segment],
                     rows: int | None = None) -> None:
        """Produce a dead-letter record; its rows count as done only when Kafka acknowledges it."""
        assert self.producer is not None
        self.producer.produce(self.settings.topics.dead_letter, value=value, headers=headers,
                              key=self.destination.name.encode(),
                              on_delivery=functools.partial(self._dead_letter_acked, segments,
                                                            sum(s.rows for s in segments) if rows is None else rows))
        self.producer.poll(0)

    def _dead_letter_acked(self, segments: list[Segment], rows: int, err: KafkaError | None, msg: Message) -> None:
        if err is not None:
            self._delivery_errors.append(f"{msg.topic()}: {err.str()}")
            return
        self._tracker.dead_lettered(segments)
        self._progress_dirty.update(s.partition for s in segments)
        self.status.resolved(segments, accepted=False)
        ROWS_DEAD_LETTERED.add(rows, self._attrs)
        self.totals["rows_dead_lettered"] += rows

    def _progress(self) -> None:
        """Log newly finished ranges; each is committed once Kafka acknowledges its delivery-log record."""
        assert self.producer is not None and self.consumer is not None
        self.producer.poll(0)  # runs acknowledgement callbacks: dead letters resolve, log records unlock commits
        if self._delivery_errors:
            raise FatalSinkError("could not write to Kafka (dead-letter or delivery-log topic): "
                                 + "; ".join(self._delivery_errors[:3]))
        ranges = self._tracker.committable()
        for delivered in ranges.values():
            key, value = delivery_record(self.destination.name, self.destination.dcr_immutable_ids,
                                         self.destination.stream_name, self.topic, delivered,
                                         extra=self.log_fields)
            self.producer.produce(self.settings.topics.delivery_log, key=key, value=value,
                                  on_delivery=functools.partial(self._logged, delivered))
        self._tracker.mark_committed(ranges.values())
        if self._progress_due():
            self._add_progress_commits()
        if self._to_commit:
            self._commit(asynchronous=True)

    def _progress_due(self) -> bool:
        interval = self.settings.sink.progress_commit_interval_ms / 1000
        return bool(self._progress_dirty) and time.monotonic() - self._last_progress_commit >= interval

    def _add_progress_commits(self) -> None:
        """Commit the row progress of partitions whose offset does not move: the same offset, new metadata."""
        if self.row_progress:
            for partition in self._progress_dirty:
                base = self._commit_base.get(partition)
                if base is not None and partition not in self._to_commit:
                    self._to_commit[partition] = base
        self._progress_dirty.clear()
        self._last_progress_commit = time.monotonic()

    def _metadata(self, partition: int, offset: int) -> str:
        """Commit metadata for ``offset``: the re-emission marks as of it, and the rows done after it."""
        marks = self.reemissions.metadata_fields(partition, offset) if self.reemissions is not None else {}
        if not self.row_progress:
            return commit_metadata.combine(marks)
        budget = commit_metadata.MAX_BYTES - len(commit_metadata.combine(marks))
        return commit_metadata.combine(marks, self._tracker.progress_fields(partition, offset, budget))

    def _logged(self, delivered: DeliveredRange, err: KafkaError | None, msg: Message) -> None:
        if err is not None:
            self._delivery_errors.append(f"{msg.topic()}: {err.str()}")
            return
        position = delivered.last_offset + 1
        self._to_commit[delivered.partition] = max(position, self._to_commit.get(delivered.partition, 0))

    def _commit(self, asynchronous: bool) -> None:
        assert self.consumer is not None
        # The commit metadata carries the re-emission marks as of each committed offset and the rows done after it
        # (both restored on assignment).
        offsets = [TopicPartition(self.topic, p, o, metadata=self._metadata(p, o)) for p, o in self._to_commit.items()]
        for p, o in self._to_commit.items():
            self._commit_base[p] = max(o, self._commit_base.get(p, o))
        self._to_commit.clear()
        try:
            if asynchronous:
                self.consumer.commit(offsets=offsets, asynchronous=True)
            else:
                self.consumer.commit(offsets=offsets, asynchronous=False)
        except KafkaException as exc:
            # Typically the partitions moved to another member; it re-delivers from the last commit.
            log.warning("%s: offset commit failed (%s); the new owner re-sends these rows", self.destination.name,
                        exc.args[0].str() if exc.args else exc)
            return
        self.state.progressed()

    def _on_commit(self, err: KafkaError | None, partitions: list[TopicPartition]) -> None:
        if err is not None and err.code() != KafkaError._NO_OFFSET:
            log.warning("%s: asynchronous offset commit failed: %s", self.destination.name, err.str())

    def _checkpoint(self) -> None:
        """Until nothing changes: log finished ranges and wait for Kafka's acknowledgements; then commit."""
        assert self.producer is not None
        while True:
            self._progress()
            if self.producer.flush(30):
                raise FatalSinkError("could not write to Kafka (dead-letter or delivery-log topic): flush timed out")
            if not self._tracker.committable() and not self._delivery_errors:
                break
        self._progress()  # raises on delivery errors
        if self._progress_dirty:
            self._add_progress_commits()
        if self._to_commit:
            self._commit(asynchronous=False)

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self._last_activity = time.monotonic()  # idle time counts from when there is something to read
        log.info("%s: assigned %s", self.destination.name, sorted(tp.partition for tp in partitions))
        self._forget_marks(partitions)  # from the committed offset on, marks as of that offset
        self._forget_progress(partitions)  # and the rows done after it, from its metadata

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        """Finish and commit what we have before another member takes the partitions (unless already failed)."""
        self._forget_backlog(partitions)
        if self._failed is None and not self._delivery_errors and not self._stopping.is_set():
            self._drain(timeout=self.settings.sink.request_timeout_seconds)
            self._checkpoint()
        self._tracker.forget(tp.partition for tp in partitions)
        self.status.forget(tp.partition for tp in partitions)
        self._forget_marks(partitions)
        self._forget_progress(partitions)

    def _on_lost(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self._forget_backlog(partitions)
        self._tracker.forget(tp.partition for tp in partitions)
        self.status.forget(tp.partition for tp in partitions)
        for tp in partitions:
            self._to_commit.pop(tp.partition, None)
        self._forget_marks(partitions)
        self._forget_progress(partitions)

    def _forget_progress(self, partitions: list[TopicPartition]) -> None:
        """Read again from the commit metadata when a partition is assigned again."""
        for tp in partitions:
            self._saved.pop(tp.partition, None)
            self._commit_base.pop(tp.partition, None)
            self._progress_dirty.discard(tp.partition)

    def _forget_marks(self, partitions: list[TopicPartition]) -> None:
        """Marks are rebuilt (commit metadata or read-back) when a partition is assigned again."""
        if self.reemissions is not None:
            self.reemissions.forget(tp.partition for tp in partitions)

    def _forget_backlog(self, partitions: list[TopicPartition]) -> None:
        """Untaken messages of partitions we give up: their new owner reads them again."""
        gone = {tp.partition for tp in partitions}
        self._backlog = deque(m for m in self._backlog if m.partition() not in gone)

    # ------------------------------------------------------------------------------------------ metrics

    def _target(self, dcr: str) -> Target:
        return Target(self.destination.name, self.destination.endpoint, dcr, self.destination.stream_name,
                      self.destination.credential.mode)

    def _on_attempt(self, status: str, seconds: float) -> None:
        attrs = {**self._attrs, "status": status}
        REQUESTS.add(1, attrs)
        UPLOAD_LATENCY.record(seconds, attrs)
        if status == "429":
            THROTTLED.add(1, self._attrs)
        elif status.isdigit() and int(status) >= 500:
            SERVER_ERRORS.add(1, self._attrs)


def _stable_hash(text: str) -> int:
    """The same shard for a Computer in every process and restart (``hash()`` is salted per process)."""
    import zlib

    return zlib.crc32(text.lower().encode("utf-8"))


def describe(stage: SinkStage) -> dict[str, Any]:
    return {"destination": stage.destination.name, **stage.totals}


def select_destinations(settings: Settings, names: list[str]) -> list[DestinationSettings]:
    """The destinations named (all when ``names`` is empty); ValueError names what is wrong."""
    if not settings.destinations:
        raise ValueError("no destinations configured: add one under `destinations:` (name, endpoint, "
                         "dcr_immutable_ids, stream_name, credential)")
    known = {d.name: d for d in settings.destinations}
    if len(known) != len(settings.destinations):
        raise ValueError("destination names must be unique")
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ValueError(f"unknown destination {', '.join(unknown)}; configured: {', '.join(known)}")
    return [known[n] for n in names] if names else list(settings.destinations)


def run_sinks(settings: Settings, stages: list[SinkStage], stop: threading.Event) -> None:
    """Run the stages (one per destination), each in its own thread, until all end or ``stop`` is set.

    Raises the first error, e.g. a ``FatalSinkError``, after every stage has stopped and committed what it finished.
    """
    errors: list[BaseException] = []

    def run(stage: SinkStage) -> None:
        try:
            run_stage(stage, stop, checkpoint_seconds=settings.sink.checkpoint_seconds)
        except BaseException as exc:
            errors.append(exc)
            stop.set()  # one destination failing for good stops the process: the pod restarts and says why

    if len(stages) == 1:
        run(stages[0])
    else:
        threads = [threading.Thread(target=run, args=(s,), name=s.state.name) for s in stages]
        with stop_on_signals(stop):  # stages in threads cannot install handlers themselves
            for t in threads:
                t.start()
            for t in threads:
                while t.is_alive():
                    t.join(0.5)
    if errors:
        raise errors[0]
