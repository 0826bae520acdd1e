"""Trace context rides in Kafka headers from producer to stream to sink (real broker, real clients)."""

from __future__ import annotations

import asyncio
import uuid

import pytest
from aiokafka import AIOKafkaConsumer
from confluent_kafka import Consumer, Message, Producer
from opentelemetry import trace

from secstream.config import Settings
from secstream.kafka import consumer_config, producer_config
from secstream.telemetry import InMemorySpans, batch_span, extract_trace_context, inject_trace_headers

from .conftest import run_child

tracer = trace.get_tracer("secstream.test")


def _consume_one(settings: Settings, topic: str) -> Message:
    consumer = Consumer(consumer_config(settings.kafka, f"trace-{uuid.uuid4().hex[:6]}"))
    consumer.subscribe([topic])
    try:
        for _ in range(120):
            msg = consumer.poll(0.5)
            if msg is not None and not msg.error():
                return msg
    finally:
        consumer.close()
    raise AssertionError(f"nothing arrived on {topic}")


def _headers(msg: Message) -> list[tuple[str, str | bytes | None]]:
    """confluent-kafka hands consumed headers over as a list of (name, bytes) tuples."""
    headers = msg.headers()
    assert isinstance(headers, list)
    return headers


def _produce(settings: Settings, topic: str, headers: list[tuple[str, str | bytes | None]]) -> None:
    producer = Producer(producer_config(settings.kafka))
    producer.produce(topic, key=b"WIN-DC01", value=b"batch", headers=headers)
    assert producer.flush(30) == 0


@pytest.mark.integration
def test_producer_stream_sink_spans_form_one_trace(settings: Settings, topics: tuple[str, str]) -> None:
    raw, normalized = topics
    with InMemorySpans() as recorded:
        with tracer.start_as_current_span("producer.batch") as producer_span:
            _produce(settings, raw, inject_trace_headers([("content-type", b"avro")]))

        incoming = _consume_one(settings, raw)
        assert ("content-type", b"avro") in _headers(incoming)
        with batch_span(tracer, "stream.batch", _headers(incoming), {"secstream.events": 1}) as stream_span:
            _produce(settings, normalized, inject_trace_headers(_headers(incoming)))

        outgoing = _consume_one(settings, normalized)
        assert [k for k, _ in _headers(outgoing)] == ["content-type", "traceparent"]
        with batch_span(tracer, "sink.batch", _headers(outgoing)):
            pass

        trace_id = producer_span.get_span_context().trace_id
        stream, sink = recorded.spans("stream.batch")[0], recorded.spans("sink.batch")[0]
        assert stream.context.trace_id == sink.context.trace_id == trace_id
        assert stream.parent is not None and stream.parent.span_id == producer_span.get_span_context().span_id
        assert sink.parent is not None and sink.parent.span_id == stream_span.get_span_context().span_id
        assert stream.kind is trace.SpanKind.CONSUMER
        assert stream.attributes == {"secstream.events": 1}


@pytest.mark.integration
def test_aiokafka_headers_carry_the_context(settings: Settings, topic: str) -> None:
    """Faust hands its agents aiokafka's header tuples; they extract the same context."""
    with tracer.start_as_current_span("producer.batch") as span:
        _produce(settings, topic, inject_trace_headers())
    expected = span.get_span_context()

    async def first_headers() -> tuple[tuple[str, bytes], ...]:
        consumer = AIOKafkaConsumer(topic, bootstrap_servers=settings.kafka.bootstrap_servers,
                                    group_id=f"aio-{uuid.uuid4().hex[:6]}", auto_offset_reset="earliest")
        await consumer.start()
        try:
            record = await asyncio.wait_for(consumer.getone(), timeout=60)
            return record.headers
        finally:
            await consumer.stop()

    headers = asyncio.run(first_headers())
    assert isinstance(headers, tuple)
    carried = trace.get_current_span(extract_trace_context(headers)).get_span_context()
    assert (carried.trace_id, carried.span_id, carried.is_remote) == (expected.trace_id, expected.span_id, True)
    as_mapping = {k: v.decode() for k, v in headers}
    assert trace.get_current_span(extract_trace_context(as_mapping)).get_span_context().span_id == expected.span_id


def test_extract_tolerates_missing_and_malformed_headers() -> None:
    for headers in (None, [], [("traceparent", None)], [("traceparent", b"garbage")], {"other": b"x"}):
        assert not trace.get_current_span(extract_trace_context(headers)).get_span_context().is_valid


def test_with_telemetry_off_a_stage_passes_the_incoming_trace_on() -> None:
    """No SDK installed: the stage's span is a no-op, yet the producer's trace reaches the next topic."""
    result = run_child("passthrough")
    assert result.returncode == 0, result.stderr
    incoming, outgoing = result.stdout.split()
    assert incoming == outgoing
