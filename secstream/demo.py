"""``make demo``: start the embedded broker, provision topics, push data through, print what arrived, stop."""

from __future__ import annotations

import time
import uuid
from pathlib import Path

from confluent_kafka import Consumer, Producer
from rich.console import Console

from secstream.broker import EmbeddedBroker
from secstream.config import Settings, load_settings
from secstream.kafka import consumer_config, producer_config
from secstream.topics import ensure_topics

console = Console()
STATE = Path(".state/demo")


def kafka_round_trip(settings: Settings, messages: int = 1000) -> float:
    """Produce to the raw topic and read it back; returns messages/s."""
    topic = settings.topics.raw
    producer = Producer(producer_config(settings.kafka))
    payloads = [f"demo-{i}".encode() for i in range(messages)]
    start = time.perf_counter()
    for i, value in enumerate(payloads):
        producer.produce(topic, key=f"host-{i % 10}".encode(), value=value)
    if producer.flush(30) != 0:
        raise RuntimeError("the broker did not acknowledge every demo message")
    consumer = Consumer(consumer_config(settings.kafka, group_id=f"secstream-demo-{uuid.uuid4().hex[:8]}"))
    consumer.subscribe([topic])
    seen: set[bytes] = set()
    deadline = time.monotonic() + 60
    while len(seen) < messages and time.monotonic() < deadline:
        for msg in consumer.consume(1000, timeout=0.5):
            if msg.error() is None and msg.value() in payloads:
                seen.add(msg.value())
    consumer.close()
    elapsed = time.perf_counter() - start
    if len(seen) != messages:
        raise RuntimeError(f"round trip lost messages: {len(seen)} of {messages} came back")
    return messages / elapsed


def main() -> None:
    base = load_settings()
    broker = EmbeddedBroker(data_dir=STATE / "broker", port=base.broker.port, host=base.broker.host)
    settings = base.model_copy(update={"kafka": base.kafka.model_copy(update={"bootstrap_servers": broker.bootstrap})})
    console.rule("secstream demo")
    pid = broker.start()
    console.print(f"embedded broker on {broker.bootstrap} (pid {pid})")
    try:
        for result in ensure_topics(settings):
            console.print(f"topic {result.spec.name}: {result.action} ({result.spec.partitions} partitions)")
        rate = kafka_round_trip(settings)
        console.print(f"round trip through Kafka: 1000 messages, {rate:,.0f} messages/s")
    finally:
        broker.stop()
        console.print("broker stopped")


if __name__ == "__main__":
    main()
