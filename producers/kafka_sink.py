"""RawEventBatches to Kafka: one message per batch, keyed by host, acknowledged through delivery callbacks.

The producer is idempotent with ``acks=all`` (``secstream.kafka.producer_config``) and never gives up on a batch
(``message.timeout.ms=0``): with the broker down, batches wait in librdkafka's queue, the in-flight byte bound
stops reading, and sending resumes when the broker is back. A batch whose delivery still fails is sent again with
the same ``batch_id``; a batch the broker refuses as too large is split in two.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable
from typing import Any

from confluent_kafka import KafkaError, Message, Producer
from opentelemetry import metrics, trace

from producers.batching import OutgoingBatch
from secstream.config import Settings
from secstream.dead_letter import dead_letter_headers
from secstream.kafka import producer_config
from secstream.kafka_metrics import KafkaClientStats
from secstream.telemetry import inject_trace_headers

log = logging.getLogger(__name__)
_meter = metrics.get_meter("secstream.producer")
_tracer = trace.get_tracer("secstream.producer")
_batches_sent = _meter.create_counter("secstream.producer.batches_delivered")
_events_sent = _meter.create_counter("secstream.producer.events_delivered")
_delivery_errors = _meter.create_counter("secstream.producer.delivery_errors")
_dead_letters = _meter.create_counter("secstream.producer.dead_letters")
_batch_events = _meter.create_histogram("secstream.producer.batch_events", unit="{event}",
                                        description="events per delivered batch")

DeliveredCallback = Callable[[OutgoingBatch], None]
WAIT_LOG_SECONDS = 10.0


def kafka_producer_conf(settings: Settings, compression: str, **overrides: Any) -> dict[str, Any]:
    conf = producer_config(
        settings.kafka,
        **{
            "compression.type": compression,
            "message.timeout.ms": 0,  # never drop a batch: it waits for the broker instead
            "queue.buffering.max.kbytes": 1_048_576,
            "message.max.bytes": 4 * 1024 * 1024,
            "linger.ms": 20,
            **overrides,
        },
    )
    return conf


class KafkaBatchSink:
    """Sends batches, bounds unacknowledged bytes, and reports each acknowledged batch to ``on_delivered``."""

    def __init__(self, settings: Settings, agent_id: str, on_delivered: DeliveredCallback,
                 max_in_flight_bytes: int, compression: str = "zstd",
                 producer: Producer | None = None) -> None:
        self.topic = settings.topics.raw
        self.dead_letter_topic = settings.topics.dead_letter
        self.agent_id = agent_id
        self.on_delivered = on_delivered
        self.max_in_flight_bytes = max_in_flight_bytes
        self.stats = KafkaClientStats("producer")  # producer queue depth gauges
        self.producer = producer or Producer(kafka_producer_conf(settings, compression, **self.stats.client_options()))
        self.in_flight_bytes = 0
        self.in_flight_batches = 0
        self.waiting_since: float | None = None
        self._last_wait_log = 0.0
        self._retry: list[OutgoingBatch] = []
        self.fatal: KafkaError | None = None
        self._closing = False

    # ------------------------------------------------------------ sending

    def send(self, batch: OutgoingBatch, wait: Callable[[], bool] | None = None) -> None:
        """Encode and hand one batch to Kafka; blocks (polling) while too many bytes are unacknowledged.

        ``wait`` is asked between polls while blocked; returning False gives up waiting (shutdown).
        """
        if batch.send_time_us == 0:
            batch.send_time_us = time.time_ns() // 1000
        value = batch.encode(self.agent_id)
        self._wait_for_room(len(value), wait)
        batch.attempts += 1
        with _tracer.start_as_current_span("producer.batch", kind=trace.SpanKind.PRODUCER, attributes={
                "secstream.host": batch.host, "secstream.batch_id": batch.batch_id,
                "secstream.events": batch.event_count, "secstream.attempt": batch.attempts}):
            headers = inject_trace_headers([("batch_id", batch.batch_id.encode())])
        size = len(value)

        def on_delivery(err: KafkaError | None, msg: Message) -> None:
            self._delivered(err, msg, batch, size)

        while True:
            try:
                self.producer.produce(
                    self.topic, value=value, key=batch.host.encode("utf-8"), headers=headers,
                    on_delivery=on_delivery,
                )
                break
            except BufferError:
                self._poll_waiting(0.5)
        self.in_flight_bytes += len(value)
        self.in_flight_batches += 1

    def dead_letter(self, reason: str, raw: bytes | None, source: str) -> None:
        """An input record that could not be read, kept with the reason."""
        _dead_letters.add(1, {"stage": "producer"})
        self.producer.produce(
            self.dead_letter_topic, value=raw or b"", key=source.encode("utf-8", "replace"),
            headers=dead_letter_headers("producer", reason, source=source),
        )

    def _wait_for_room(self, size: int, wait: Callable[[], bool] | None) -> None:
        while self.in_flight_batches and self.in_flight_bytes + size > self.max_in_flight_bytes:
            if wait is not None and not wait():
                return
            self._poll_waiting(0.2)
        self.waiting_since = None

    def _poll_waiting(self, timeout: float) -> None:
        now = time.monotonic()
        if self.waiting_since is None:
            self.waiting_since = now
        elif now - self._last_wait_log >= WAIT_LOG_SECONDS and now - self.waiting_since >= 2.0:
            self._last_wait_log = now
            log.warning(
                "waiting for Kafka (topic %s): %d batches / %.1f MB sent but not acknowledged for %.0f s; "
                "reading is paused and resumes when the broker acknowledges", self.topic,
                self.in_flight_batches, self.in_flight_bytes / 1e6, now - self.waiting_since,
            )
        self.poll(timeout)

    # ------------------------------------------------------------ acknowledgements

    def poll(self, timeout: float = 0.0) -> None:
        self.producer.poll(timeout)
        self._resend_failed()
        if self.fatal is not None:
            raise RuntimeError(f"Kafka producer failed: {self.fatal.str()}")

    def _delivered(self, err: KafkaError | None, msg: Message, batch: OutgoingBatch, size: int) -> None:
        self.in_flight_bytes -= size
        self.in_flight_batches -= 1
        if err is None:
            _batches_sent.add(1)
            _events_sent.add(batch.event_count)
            _batch_events.record(batch.event_count)
            whole = batch.completed_part()
            if whole is not None:
                self.on_delivered(whole)
            return
        _delivery_errors.add(1, {"error": err.name()})
        if self._closing:
            return
        if err.code() == KafkaError.MSG_SIZE_TOO_LARGE and batch.event_count > 1:
            log.warning("batch %s (%d events) too large for the broker; sending it as two", batch.batch_id,
                        batch.event_count)
            self._retry.extend(split_batch(batch))
        elif err.fatal():
            self.fatal = err
        else:
            log.warning("batch %s not delivered (%s); sending it again", batch.batch_id, err.str())
            self._retry.append(batch)

    def _resend_failed(self) -> None:
        while self._retry:
            self.send(self._retry.pop(0))

    def flush(self, timeout: float) -> bool:
        """Wait up to ``timeout`` for every batch to be acknowledged; True when none is left."""
        deadline = time.monotonic() + timeout
        while self.in_flight_batches or self._retry:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            self.producer.flush(min(remaining, 0.5))
            self._resend_failed()
        return True

    def close(self, timeout: float = 5.0) -> None:
        """Wait up to ``timeout`` for acknowledgements, then drop what is left (it was never checkpointed, so a
        restart sends it again) and release the client."""
        self.flush(timeout)
        self._closing = True
        if self.in_flight_batches:
            self.producer.purge()
            self.producer.poll(0)
        self.producer.close()
        self.stats.close()


def split_batch(batch: OutgoingBatch) -> list[OutgoingBatch]:
    """Two halves with ids derived from the original, so a resend of either half keeps the same id. The
    original counts as delivered (and moves the checkpoint) only when both halves are."""
    events = batch.event_dicts()
    half = len(events) // 2
    parts = []
    for index, half_events in enumerate((events[:half], events[half:])):
        part = OutgoingBatch(batch.host, str(uuid.uuid5(uuid.UUID(batch.batch_id), str(index))), batch.opened_at)
        part.events = half_events
        part.sequence = batch.sequence
        part.send_time_us = batch.send_time_us
        part.parent = batch
        parts.append(part)
    batch.parts_left = len(parts)
    return parts
