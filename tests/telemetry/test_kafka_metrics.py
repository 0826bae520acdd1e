"""Consumer lag and producer queue depth from librdkafka's statistics, against the real broker."""

from __future__ import annotations

import time
import uuid

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition

from secstream.config import Settings
from secstream.kafka import consumer_config, producer_config
from secstream.kafka_metrics import KafkaClientStats
from secstream.telemetry import InMemoryMetrics

pytestmark = pytest.mark.integration


def _poll_until(client: Producer | Consumer, stats: KafkaClientStats, condition, seconds: float = 20.0) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        client.poll(0.1)  # statistics callbacks are served from poll
        if stats.latest is not None and condition(stats.latest):
            return
    raise AssertionError(f"statistics never showed the expected state; last: {stats.latest}")


def test_producer_queue_depth(settings: Settings, topic: str) -> None:
    stats = KafkaClientStats("test-producer", interval_seconds=0.2)
    # A long linger keeps the records in the producer's queue until flush.
    producer = Producer({**producer_config(settings.kafka, **{"linger.ms": 60_000}), **stats.client_options()})
    with InMemoryMetrics() as recorded:
        for i in range(25):
            producer.produce(topic, key=b"WIN-DC01", value=f"batch-{i}".encode())
        _poll_until(producer, stats, lambda s: s.queue_messages == 25)
        assert recorded.value("secstream.kafka.producer_queue_messages", stage="test-producer") == 25
        assert recorded.value("secstream.kafka.producer_queue_bytes", stage="test-producer") >= 25 * 7

        assert producer.flush(30) == 0
        _poll_until(producer, stats, lambda s: s.queue_messages == 0)
        assert recorded.value("secstream.kafka.producer_queue_messages", stage="test-producer") == 0
        assert recorded.value("secstream.kafka.brokers_up", stage="test-producer") == 1
    stats.close()


def test_consumer_lag_is_measured_from_the_committed_offset(settings: Settings, topic: str) -> None:
    producer = Producer(producer_config(settings.kafka))
    for i in range(30):
        producer.produce(topic, partition=1, key=b"WIN-WS07", value=f"batch-{i}".encode())
    assert producer.flush(30) == 0

    stats = KafkaClientStats("test-stream", interval_seconds=0.2)
    consumer = Consumer({**consumer_config(settings.kafka, f"lag-{uuid.uuid4().hex[:6]}"), **stats.client_options()})
    consumer.assign([TopicPartition(topic, 1, 0)])
    with InMemoryMetrics() as recorded:
        try:
            received = 0
            deadline = time.monotonic() + 30
            while received < 30 and time.monotonic() < deadline:
                msg = consumer.poll(0.2)
                if msg is not None and not msg.error():
                    received += 1
            assert received == 30
            # Only the first 10 records count as done (committed); the stage still owes 20.
            consumer.commit(offsets=[TopicPartition(topic, 1, 10)], asynchronous=False)
            _poll_until(consumer, stats, lambda s: s.consumer_lag.get((topic, 1)) == 20)
            assert recorded.value("secstream.kafka.consumer_lag", stage="test-stream", topic=topic, partition=1) == 20

            consumer.commit(offsets=[TopicPartition(topic, 1, 30)], asynchronous=False)
            _poll_until(consumer, stats, lambda s: s.consumer_lag.get((topic, 1)) == 0)
            assert recorded.value("secstream.kafka.consumer_lag", stage="test-stream", topic=topic) == 0
        finally:
            consumer.close()
            stats.close()
        assert "secstream.kafka.consumer_lag" not in recorded.names()  # a closed client is no longer reported
