"""Exact metric values through the global OpenTelemetry API, read back with InMemoryMetrics."""

from __future__ import annotations

import uuid

import pytest
from confluent_kafka import Consumer, Producer
from opentelemetry import metrics
from opentelemetry.metrics import CallbackOptions, Observation

from secstream.kafka import consumer_config, producer_config
from secstream.telemetry import InMemoryMetrics


def _meter(stage: str) -> metrics.Meter:
    return metrics.get_meter(f"secstream.{stage}")


def test_counter_values_are_exact_per_attribute_set() -> None:
    name = f"secstream.test.events_{uuid.uuid4().hex[:6]}"
    counter = _meter("test").create_counter(name, unit="{event}")
    with InMemoryMetrics() as recorded:
        for _ in range(7):
            counter.add(500, {"stage": "stream", "outcome": "accepted"})
        counter.add(3, {"stage": "stream", "outcome": "filtered"})
        counter.add(2, {"stage": "sink", "outcome": "accepted"})
        assert recorded.value(name, stage="stream", outcome="accepted") == 3500
        assert recorded.value(name, stage="stream") == 3503
        assert recorded.value(name, outcome="accepted") == 3502
        assert recorded.value(name) == 3505
        assert recorded.value(name, stage="replay") == 0


def test_a_new_reader_starts_at_zero() -> None:
    name = f"secstream.test.batches_{uuid.uuid4().hex[:6]}"
    counter = _meter("test").create_counter(name)
    with InMemoryMetrics() as first:
        counter.add(5)
        with InMemoryMetrics() as second:
            counter.add(1)
            assert second.value(name) == 1
        assert first.value(name) == 6


def test_histogram_and_gauge() -> None:
    suffix = uuid.uuid4().hex[:6]
    histogram = _meter("test").create_histogram(f"secstream.test.batch_size_{suffix}", unit="{event}")
    depth = {"value": 0}

    def observe(_options: CallbackOptions) -> list[Observation]:
        return [Observation(depth["value"], {"queue": "producer"})]

    _meter("test").create_observable_gauge(f"secstream.test.queue_depth_{suffix}", callbacks=[observe])
    with InMemoryMetrics() as recorded:
        for size in (500, 500, 120):
            histogram.record(size, {"topic": "raw"})
        depth["value"] = 42
        stats = recorded.histogram(f"secstream.test.batch_size_{suffix}", topic="raw")
        assert (stats.count, stats.sum, stats.min, stats.max) == (3, 1120, 120, 500)
        assert recorded.value(f"secstream.test.queue_depth_{suffix}", queue="producer") == 42
        with pytest.raises(TypeError):
            recorded.value(f"secstream.test.batch_size_{suffix}")


@pytest.mark.integration
def test_counts_match_records_that_made_the_trip_through_kafka(settings, topic: str) -> None:
    """Count per delivery report and per consumed record; both must equal what the broker actually holds."""
    suffix = uuid.uuid4().hex[:6]
    delivered = _meter("test").create_counter(f"secstream.test.delivered_{suffix}")
    consumed = _meter("test").create_counter(f"secstream.test.consumed_{suffix}")
    hosts = {"WIN-DC01": 13, "WIN-WS07": 8}

    def on_delivery(err, msg) -> None:
        if err is None:
            delivered.add(1, {"topic": topic, "computer": bytes(msg.key() or b"").decode()})

    with InMemoryMetrics() as recorded:
        producer = Producer(producer_config(settings.kafka))
        for host, count in hosts.items():
            for i in range(count):
                producer.produce(topic, key=host.encode(), value=f"batch-{i}".encode(), on_delivery=on_delivery)
        assert producer.flush(30) == 0

        consumer = Consumer(consumer_config(settings.kafka, f"g-{suffix}"))
        consumer.subscribe([topic])
        seen = 0
        try:
            for _ in range(200):
                msg = consumer.poll(0.5)
                if msg is None or msg.error():
                    if seen == sum(hosts.values()):
                        break
                    continue
                seen += 1
                consumed.add(1, {"computer": bytes(msg.key() or b"").decode()})
        finally:
            consumer.close()

        for host, count in hosts.items():
            assert recorded.value(f"secstream.test.delivered_{suffix}", computer=host, topic=topic) == count
            assert recorded.value(f"secstream.test.consumed_{suffix}", computer=host) == count
