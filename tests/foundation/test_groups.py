"""Operators' group commands against the real broker: show lag, reset to a time with and without confirmation."""

from __future__ import annotations

import time

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient
from typer.testing import CliRunner

from secstream.cli import app
from secstream.config import Settings
from secstream.offsets import Position, committed_offsets, plan_ranges
from secstream.topics import delete_topics, ensure_topics

pytestmark = pytest.mark.integration

NOW_MS = int(time.time() * 1000)
HOUR_MS = 3600_000


@pytest.fixture
def timed_topic(settings: Settings):  # type: ignore[no-untyped-def]
    """10 messages per partition, one every 10 minutes of (send) time, ending now."""
    ensure_topics(settings)
    producer = Producer({"bootstrap.servers": settings.kafka.bootstrap_servers})
    for i in range(10):
        ts = NOW_MS - (9 - i) * 10 * 60_000
        for p in range(3):
            producer.produce(settings.topics.raw, value=f"{p}-{i}".encode(), partition=p, timestamp=ts)
    assert producer.flush(30) == 0
    yield settings
    delete_topics(settings, [settings.topics.raw, settings.topics.normalized, settings.topics.dead_letter,
                             settings.topics.delivery_log])


def _commit(settings: Settings, group: str, offsets: dict[int, int]) -> None:
    consumer = Consumer({"bootstrap.servers": settings.kafka.bootstrap_servers, "group.id": group})
    consumer.commit(offsets=[TopicPartition(settings.topics.raw, p, o) for p, o in offsets.items()],
                    asynchronous=False)
    consumer.close()


def test_plan_ranges_by_time_and_offset(timed_topic: Settings) -> None:
    s = timed_topic
    consumer = Consumer({"bootstrap.servers": s.kafka.bootstrap_servers, "group.id": "planner"})
    # Messages i=5..9 are at or after now-45min (i=5 is at now-40min).
    ranges = plan_ranges(consumer, s.topics.raw, Position.at_ms(NOW_MS - 45 * 60_000), None)
    assert [(r.partition, r.start, r.end) for r in ranges] == [(0, 5, 10), (1, 5, 10), (2, 5, 10)]
    bounded = plan_ranges(consumer, s.topics.raw, Position.parse("2"), Position.parse("4"), partitions=[1])
    assert [(r.partition, r.start, r.end, r.size) for r in bounded] == [(1, 2, 4, 2)]
    future = plan_ranges(consumer, s.topics.raw, Position.at_ms(NOW_MS + HOUR_MS), None)
    assert all(r.size == 0 for r in future), "a start after the last message gives an empty range"
    consumer.close()


def test_show_and_reset(timed_topic: Settings) -> None:
    s = timed_topic
    group = "live-sink"
    _commit(s, group, {0: 10, 1: 10, 2: 7})
    runner = CliRunner()
    base = ["--bootstrap-servers", s.kafka.bootstrap_servers, "groups"]

    shown = runner.invoke(app, [*base, "show", "--group", group])
    assert shown.exit_code == 0, shown.output
    assert "total lag: 3" in shown.output

    to_time = Position.at_ms(NOW_MS - 25 * 60_000).describe()  # i=7..9 are newer
    declined = runner.invoke(app, [*base, "reset", "--group", group, "--to-time", to_time], input="n\n")
    assert declined.exit_code == 1 and "nothing changed" in declined.output
    admin = AdminClient({"bootstrap.servers": s.kafka.bootstrap_servers})
    assert committed_offsets(admin, group)[(s.topics.raw, 2)] == 7

    done = runner.invoke(app, [*base, "reset", "--group", group, "--to-time", to_time, "--yes"])
    assert done.exit_code == 0, done.output
    after = committed_offsets(admin, group)
    assert {p: after[(s.topics.raw, p)] for p in range(3)} == {0: 7, 1: 7, 2: 7}


def test_reset_rejects_bad_time(timed_topic: Settings) -> None:
    result = CliRunner().invoke(app, ["--bootstrap-servers", timed_topic.kafka.bootstrap_servers, "groups", "reset",
                                      "--group", "g", "--to-time", "yesterday", "--yes"])
    assert result.exit_code == 2
    assert "ISO-8601" in result.output
