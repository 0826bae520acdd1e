"""One trace from a remote host to Kafka: agent-mode producer → HTTPS → collector → the raw record's headers.

A real producer stage in agent mode posts a corpus EVTX file to a real collector (TLS, own event loop) that writes
to the real broker; spans go to an in-memory exporter.
"""

from __future__ import annotations

import ssl
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Consumer, TopicPartition
from opentelemetry.trace import SpanKind, format_span_id, format_trace_id

from producers.adapters.sources import discover
from producers.agent import CollectorSink
from producers.collector import build_collector, tls_context
from producers.stage import ProducerStage
from schemas.codec import decode_raw_batch
from secstream.config import Settings
from secstream.lifecycle import run_stage
from secstream.telemetry import InMemorySpans
from secstream.topics import delete_topics, ensure_topics
from tests.conftest import CORPUS
from tests.producers.test_collector import RunningCollector, _self_signed

pytestmark = pytest.mark.integration

TOKEN = "trace-agent-token-0123456789"
EVTX = (CORPUS / "mdecrevoisier__EVTX-to-MITRE-Attack/TA0006-Credential Access/T1110.xxx-Brut force/"
        "ID4625-OpenSSH brutforce with non existing users.evtx")
EVTX_RECORDS = 20  # SOURCES.md


@pytest.fixture
def agent_settings(settings: Settings, tmp_path: Path) -> Iterator[Settings]:
    tokens = tmp_path / "tokens"
    tokens.write_text(f"agent-1 {TOKEN}\n")
    cert, key = _self_signed(tmp_path)
    s = settings.model_copy(update={
        "collector": settings.collector.model_copy(update={
            "tokens_file": tokens, "collector_id": "collector-a", "tls_cert_file": cert, "tls_key_file": key}),
        "producer": settings.producer.model_copy(update={
            "state_file": tmp_path / "agent-state.json", "batch_max_events": 8}),
    })
    ensure_topics(s)
    yield s
    delete_topics(s, [s.topics.raw, s.topics.dead_letter])


def raw_records(s: Settings) -> list[tuple[dict[str, Any], dict[str, str]]]:
    """(batch, headers) of every record on the raw topic."""
    topic = s.topics.raw
    consumer = Consumer({"bootstrap.servers": s.kafka.bootstrap_servers, "group.id": "trace-check",
                         "enable.auto.commit": False})
    try:
        partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        ends = {p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] for p in partitions}
        consumer.assign([TopicPartition(topic, p, 0) for p in ends])
        out = []
        left = sum(ends.values())
        for _ in range(300):
            if not left:
                break
            msg = consumer.poll(0.2)
            if msg is None or msg.error():
                continue
            raw_headers = msg.headers() or []
            pairs = raw_headers.items() if isinstance(raw_headers, dict) else raw_headers
            headers = {k: v.decode() for k, v in pairs if isinstance(v, bytes)}
            out.append((decode_raw_batch(msg.value() or b""), headers))
            left -= 1
        assert not left, "raw topic not read to its end"
        return out
    finally:
        consumer.close()


def test_the_agent_posts_trace_reaches_the_kafka_record_through_the_collector(agent_settings: Settings,
                                                                                tmp_path: Path) -> None:
    s = agent_settings
    stop = threading.Event()
    client_tls = ssl.create_default_context(cafile=str(s.collector.tls_cert_file))
    with InMemorySpans() as spans, RunningCollector(build_collector(s), tls_context(s.collector)) as collector:

        def agent(agent_id: str, on_delivered: Any) -> CollectorSink:
            return CollectorSink([collector.url], TOKEN, agent_id, on_delivered, stop, context=client_tls)

        run_stage(ProducerStage(s, discover([EVTX]), agent, stop=stop))
    posts = {(p.attributes or {})["secstream.batch_id"]: p for p in spans.spans("producer.collector_post")}
    requests = {r.context.span_id: r for r in spans.spans("collector.request")}
    records = raw_records(s)
    assert sum(len(batch["events"]) for batch, _ in records) == EVTX_RECORDS
    assert len(records) == len(posts) == len(requests) == 3  # 20 events in batches of at most 8

    for batch, headers in records:
        post = posts[batch["batch_id"]]
        version, trace_id, parent_id, flags = headers["traceparent"].split("-")
        # The record's parent is the collector's request span, whose parent is the agent's POST span.
        request = requests[int(parent_id, 16)]
        assert request.kind is SpanKind.SERVER and post.kind is SpanKind.CLIENT
        assert request.parent is not None and request.parent.span_id == post.context.span_id
        assert trace_id == format_trace_id(post.context.trace_id) == format_trace_id(request.context.trace_id)
        assert parent_id == format_span_id(request.context.span_id)
        assert version == "00" and int(flags, 16) & 1  # sampled
        assert headers["batch_id"] == batch["batch_id"]
    assert len({format_trace_id(p.context.trace_id) for p in posts.values()}) == 3  # a trace per batch
